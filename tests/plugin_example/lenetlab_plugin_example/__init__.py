"""An example lenetlab plugin package; the registrations are in :mod:`lenetlab_plugin_example.plugin`."""
