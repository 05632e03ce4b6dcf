"""Following a task's log: replay what is there, then go live, until the result.

Modelled on websockets' sans-I/O design: :mod:`runner.follow.cursor` is the protocol (fed Redis replies as
plain data, it gives back entries, gaps and where to read next, with no I/O and no clock), and two thin
drivers do the reading: :mod:`runner.follow.sync` (the CLI, ``TaskHandle.events()``, MCP pages) and
:mod:`runner.follow.aio` (the dashboard: pages of the tail, then paced live batches).
"""
