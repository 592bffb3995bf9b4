"""Sessions: each one a stdio child process, a router, and the clocks that end it."""
