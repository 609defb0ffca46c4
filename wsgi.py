"""The broker for WSGI servers (``application``) and AWS Lambda (``lambda_handler``), for the
config file that ``BROKER_CONFIG`` names."""

from service.cli import app_from_environment
from service.lambda_handler import make_handler

application = app_from_environment()
lambda_handler = make_handler(application)
