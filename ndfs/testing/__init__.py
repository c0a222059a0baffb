"""Test support shipped with the package: the backend conformance suite and a mount fixture helper.

Other projects (and each new ndfs backend) reuse these to prove they behave.
"""
