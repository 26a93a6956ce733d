"""Example apps: the bench contract (`bench`) and the chat demo (`chat`)."""
