"""Configuration: the settings, as field groups composed into one `Settings`, and their checks."""
