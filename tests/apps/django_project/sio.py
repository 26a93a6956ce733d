
import socketio
from contract import python_socketio_events

sio = socketio.Server(async_mode="eventlet")


python_socketio_events(sio)
