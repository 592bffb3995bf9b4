"""Programs that write files for users: `client-config` and `new-service`."""
