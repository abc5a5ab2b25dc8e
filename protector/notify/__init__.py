"""Notifications (docs/notifications.md): events.py groups and rate-limits what happened
(pure), sender.py delivers the messages through Apprise."""
