"""The master process: owns the port, routes each connection to its worker.

Never imports eventlet or the user's app (see docs/design notes in README).
"""
