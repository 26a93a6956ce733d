import os

from django.http import HttpResponse
from django.urls import path


def index(request):
    return HttpResponse(f"<!doctype html><h1>django page, pid {os.getpid()}</h1>")


urlpatterns = [path("", index)]
