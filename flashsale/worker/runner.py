"""`flask worker`: an RQ worker with the scheduler, the sweeper's ticker and a pool of payment threads."""

import logging
import threading
import time

import redis as redis_lib
from rq import SimpleWorker
from rq.scheduler import RQScheduler

from .. import keys
from ..extensions import redis_store
from ..web.logs import current_job_id, current_request_id
from . import webhooks
from .payment_pool import PaymentPool, install

log = logging.getLogger(__name__)


def run_worker(app, burst=False):
    """Work the app's queue until stopped (or, with burst, until it is empty), through Redis outages."""
    config = app.config
    # The worker blocks on Redis for long stretches, so it gets a connection without a read timeout.
    connection = redis_store.connect(config, socket_timeout=None)
    queue = redis_store.queue.__class__(config["QUEUE_NAME"], connection=connection)
    stop = threading.Event()
    # Payment jobs hand their gateway calls to this pool, so many charges are in flight at once.
    pool = PaymentPool(app, config["PAYMENT_CONCURRENCY"])
    install(pool)
    current = []  # the RQ worker now working, for the ticker's scheduler check
    ticker = threading.Thread(target=_sweep_ticker, args=(connection, queue, config, stop, current),
                              daemon=True, name="sweep-ticker")
    ticker.start()
    delivery_pool = webhooks.start_pool(app)  # webhook deliveries on threads of their own
    try:
        while True:
            # SimpleWorker runs jobs in this process, inside this app context: no fork per job, pooled
            # database connections reused, and jobs see the same configuration as the command.
            worker = None
            try:
                worker = Worker([queue], connection=connection, connect=lambda: redis_store.connect(config))
                current[:] = [worker]
                worker.work(with_scheduler=True, burst=burst)
            except redis_lib.RedisError:
                pass  # the outage met it starting, or in its teardown
            # A signal's warm shutdown stamps the date (idle, RQ leaves _stop_requested unset).
            if worker is not None and (burst or worker._shutdown_requested_date is not None):
                break
            # RQ's loop quits on a Redis error in the middle of a job (a failover): work on, with a new
            # RQ worker, once Redis answers. The job it was running is the reconciler's (a lease).
            log.warning("the worker lost Redis; working again once it answers")
            _wait_for_redis(connection, stop)
    finally:
        stop.set()
        pool.shutdown()  # a warm shutdown finishes the charges in flight
        install(None)
        delivery_pool.shutdown()
        webhooks.install(None)


def _wait_for_redis(connection, stop):
    """Return once Redis (the current primary) answers a PING."""
    while not stop.is_set():
        try:
            connection.ping()
            return
        except redis_lib.RedisError:
            stop.wait(0.5)


class Scheduler(RQScheduler):
    """RQ's scheduler process, on a client from RedisStore.connect, that outlives a Redis outage.

    RQ rebuilds the scheduler's connection in the forked process from the pool's keyword arguments,
    which cannot rebuild a Sentinel-managed pool; and a ConnectionError ended the process, which RQ only
    restarts in its maintenance, every 600 s. Here the fork connects afresh through `connect`, and an
    outage costs a retry a second later instead of the process.
    """

    def __init__(self, *args, connect, **kwargs):
        super().__init__(*args, **kwargs)
        self._connect = connect

    @property
    def connection(self):
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def work(self):
        while not self._stop_requested:
            try:
                return super().work()
            except redis_lib.RedisError as error:
                self.log.warning("scheduler: Redis unavailable (%s); retrying", error.__class__.__name__)
                self._connection = None
                time.sleep(self.interval)
        return None


class Worker(SimpleWorker):
    """RQ's SimpleWorker with our Scheduler, a short back-off after a Redis outage, and log lines during a
    job that name the job and the request that enqueued it."""

    max_connection_wait_time = 2.0  # RQ's 60 s would leave jobs waiting long after a failover

    def __init__(self, *args, connect, **kwargs):
        super().__init__(*args, **kwargs)
        self._connect = connect

    _burst_scheduler = False

    def _start_scheduler(self, burst=False, logging_level="INFO", *args, **kwargs):
        self._burst_scheduler = burst
        self.scheduler = Scheduler(self.queues, connection=self.connection, connect=self._connect,
                                   logging_level=logging_level or self.log.level,
                                   serializer=self.serializer)
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    def execute_job(self, job, queue):
        tokens = (current_request_id.set(job.meta.get("request_id")), current_job_id.set(job.id))
        try:
            return super().execute_job(job, queue)
        finally:
            current_job_id.reset(tokens[1])
            current_request_id.reset(tokens[0])

    def restart_dead_scheduler(self):
        """Run a scheduler again within one sweep period when none is alive here: this one's died (e.g.
        SIGKILL), or another worker's lock lapsed (it died, or a failover lost the lock). RQ's own check
        comes every 600 s."""
        scheduler = self.scheduler
        if scheduler is None or self._burst_scheduler:
            return
        if scheduler._process is None or not scheduler._process.is_alive():
            scheduler.acquire_locks(auto_start=True)


def _sweep_ticker(connection, queue, config, stop, current):
    """Every SWEEP_SECONDS, one worker across the cluster enqueues the sweeper, reconciliation and the
    webhook deliveries at the queue's front (so a flood of other jobs never starves them), and a dead
    scheduler is restarted."""
    from .jobs import reconcile_payments, sweep_expired_holds
    from .webhooks import deliver_webhooks

    period = config["SWEEP_SECONDS"]
    while not stop.is_set():
        try:
            for worker in current[:1]:
                worker.restart_dead_scheduler()
            # SET NX PX: whichever worker claims this period enqueues; the others skip it.
            if connection.set(keys.sweep_tick(), "1", nx=True, px=int(period * 1000 * 0.9)):
                for job, job_id in ((reconcile_payments, "reconcile-payments"),
                                    (sweep_expired_holds, "sweep-expired-holds"),
                                    (deliver_webhooks, "deliver-webhooks")):
                    queue.enqueue(job, job_id=job_id, at_front=True, result_ttl=60, failure_ttl=3600)
        except redis_lib.RedisError:
            pass  # Redis is down; the worker itself will report it, and we try again next period
        stop.wait(period)
