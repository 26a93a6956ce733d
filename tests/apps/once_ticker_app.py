"""A ticker run in exactly one worker of the cluster, with imcluster.run_once."""

import os
import time

import socketio

import imcluster

sio = socketio.Server(async_mode="eventlet")


def ticker():
    n = 0
    while True:
        sio.sleep(0.2)
        n += 1
        sio.emit("tick", {"n": n, "pid": os.getpid(), "t": time.time()})


imcluster.run_once(sio, "ticker", ticker)


@sio.on("whoami")
def whoami(sid, data=None):
    return os.getpid()
