"""The worker process: python-socketio on eventlet, fed client fds by the master."""
