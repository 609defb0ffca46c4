"""The broker's configuration: one YAML file -> a frozen, validated ``BrokerConfig``.

``source`` reads the YAML (remembering lines) and resolves ``${…}`` references, ``types``
holds the field types, ``models`` the section models and the provider base,
``document`` the whole ``BrokerConfig`` and the ``load_config``/``parse_config``/
``build_config`` entry points, and ``report`` turns problems into
``path (line N): message``. Provider kinds keep their own models in
``identity.providers``.
"""
