"""Real programs that talk to Strongroom in tests, each a private instance.

A peer here is a program a user would run beside the archive (a mail
server journaling to it, an IMAP server receiving restores). Each class
starts its own instance on free loopback ports, with all of its state under
a directory the test gives it, and stops it however the test ends.
"""
