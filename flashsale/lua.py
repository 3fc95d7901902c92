"""The one way flashsale runs Lua: each script is loaded into Redis once and run by its SHA.

Scripts are module constants next to the code that uses them, each with a comment naming its KEYS,
ARGV and return value (as rq does). `Script(source)` computes the SHA once; a call sends EVALSHA, and
when Redis answers NOSCRIPT (a restart or a failover emptied its script cache, or it never saw this
script) loads the source and sends EVALSHA again, so the text crosses the network once per Redis
server, not per call. The same works on a pipeline (`queue`, then `execute`) and on a bare connection
(`on_connection`, for the sold-out gate's per-thread connection).
"""

import hashlib

import redis
from redis.exceptions import NoScriptError


class Script:
    """A Lua script run by SHA on any client, pipeline or connection, loaded when Redis lacks it."""

    def __init__(self, source):
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source).hexdigest()
        _known[self.sha] = self

    def __call__(self, client, keys=(), args=()):
        """Run the script on a client and return its reply."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe, keys=(), args=()):
        """Queue the script on a pipeline; run the pipeline with lua.execute so NOSCRIPT is handled."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def on_connection(self, connection, keys=(), args=()):
        """Run the script on a bare redis-py connection (one command, one reply)."""
        try:
            connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return connection.read_response()
        except NoScriptError:
            connection.send_command("SCRIPT", "LOAD", self.source)
            connection.read_response()
            connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return connection.read_response()


def replicated(script, client, keys=(), args=(), replicas=0, timeout_ms=500):
    """Run a script, then (replicas > 0) WAIT until that many replicas have its writes: (reply, acked).

    WAIT counts the writes of the connection it is sent on, so the script and WAIT go down one
    pipeline's connection. A write a replica holds survives the primary's loss: Sentinel promotes the
    replica that is furthest ahead. With replicas=0 this is a plain call (acked is None).
    """
    if not replicas:
        return script(client, keys, args), None
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        script.queue(pipe, keys, args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, acked = pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError) and attempt == 1:
            client.script_load(script.source)  # and again: WAIT must follow the write on its connection
            continue
        for answer in (reply, acked):
            if isinstance(answer, Exception):
                raise answer
        return reply, acked
    raise AssertionError("unreachable")


def execute(pipe):
    """Execute a pipeline (transaction=False) that may carry queued scripts; its replies, in order.

    A script Redis did not know answered NOSCRIPT without running, while the pipeline's other commands
    ran: each such script is loaded and run again, once, after the pipeline. Any other error is raised,
    as pipe.execute() would.
    """
    commands = [args for args, _options in pipe.command_stack]
    replies = pipe.execute(raise_on_error=False)
    client = None
    for index, reply in enumerate(replies):
        command = commands[index]
        if isinstance(reply, NoScriptError) and command[0] == "EVALSHA" and command[1] in _known:
            client = client or redis.Redis(connection_pool=pipe.connection_pool)
            client.script_load(_known[command[1]].source)
            replies[index] = client.execute_command(*command)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


_known = {}  # sha -> Script: every script flashsale runs, to load one a pipeline found missing
