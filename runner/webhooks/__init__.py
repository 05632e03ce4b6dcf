"""Webhooks: a signed JSON POST to a URL when a task ends (and, if the queue asks, when it pauses or resumes).

How a webhook is delivered, file by file (docs/webhooks.md is the reference):

* ``payload.py`` — what a POST carries and how it is signed (pure: no Redis, no network).
* ``queue_setting.py`` — a queue's webhook URL, whether it wants pauses, and its signing secret, in Redis.
* ``outbox.py`` — where an event puts its delivery: a Redis outbox written by one Lua call, sent with the
  end's other bookkeeping; the core reaches it through runner/hooks.py (``outbox.LISTENER``). Also the claim
  (a lease) and the record of each attempt.
* ``delivery.py`` — the worker's threads that claim due deliveries, POST them, and retry with backoff.
* ``http_post.py`` — one POST: one lookup, a connection pinned to the checked address, one deadline.
* ``destination.py`` — which addresses a POST may go to (pure: the check against the worker's own network).
"""
