"""A minimal Django project with python-socketio beside it, as python-socketio's
Django example sets it up: `wsgi.application` wraps Django in socketio.WSGIApp.
Served as `django_project.wsgi:application`."""
