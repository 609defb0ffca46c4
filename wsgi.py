from service.cli import app_from_environment

application = app_from_environment()
