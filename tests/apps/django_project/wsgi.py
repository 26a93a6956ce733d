import os

import socketio
from django.core.wsgi import get_wsgi_application

from django_project.sio import sio

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")

django_app = get_wsgi_application()
application = socketio.WSGIApp(sio, django_app)
