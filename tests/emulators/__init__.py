"""Local stand-ins for cloud APIs, driven by the cloud targets' tests with the real client libraries.

Import each from its module (``from emulators.cloudrun import CloudRunEmulator``), so that one
emulator's client library is only needed by the tests that use it.
"""
