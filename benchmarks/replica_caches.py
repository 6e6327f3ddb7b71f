"""Replicas on one PostgreSQL: how soon a revocation made through one replica is refused by
another (against the cache's own bound, CACHE_SECONDS), and what a tick's claim costs (against
a one-row read on the same store), the figures docs/replicas.md quotes.

    ADAPTER_TEST_POSTGRES_URL=postgresql+psycopg://... .venv/bin/python -m benchmarks.replica_caches
"""

import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapter.replicas import CacheNotices, SharedJobs
from adapter.runtime import open_runtime
from adapter.security.clients import CACHE_SECONDS
from adapter.settings import Settings
from adapter.store.tables import job_ticks
from benchmarks.postgres import scratch_schema
from benchmarks.scratch import scratch_folder

REVOCATIONS = 20
CLAIMS = 500


def main() -> None:
    folder = scratch_folder("replica-caches-")
    with scratch_schema() as (_, url):
        settings = Settings(database_url=url, mappings_dir=folder / "mappings")
        one, other = open_runtime(settings), open_runtime(settings)
        heard = CacheNotices(other)
        heard.start()
        try:
            assert heard.listener is not None and heard.listener.listening.wait(10)
            delays = []
            for n in range(REVOCATIONS):
                client, key = one.clients.add_key_client(f"bench {n}", "admin", datetime.now(UTC))
                time.sleep(0.05)  # the notice of the new client is heard first
                assert other.clients.by_key(key) is not None  # now in the other's cache
                began = time.perf_counter()
                one.clients.revoke(client.id, datetime.now(UTC))
                while other.clients.by_key(key) is not None:
                    time.sleep(0.0005)
                delays.append(time.perf_counter() - began)
            median, longest = statistics.median(delays), max(delays)
            print(
                f"revocation refused by the other replica after: median {median * 1000:.1f} ms, "
                f"longest {longest * 1000:.1f} ms of {REVOCATIONS}; the cache's bound "
                f"{CACHE_SECONDS:.0f} s is {CACHE_SECONDS / longest:.0f}x the longest"
            )

            shared = SharedJobs(one.store.engine)
            start = datetime(2026, 1, 1, tzinfo=UTC)
            began = time.perf_counter()
            for n in range(CLAIMS):
                shared.claim("bench", start + timedelta(seconds=n))
            claim = (time.perf_counter() - began) / CLAIMS
            began = time.perf_counter()
            for _ in range(CLAIMS):
                with one.store.engine.connect() as connection:
                    # One of the claims just made: a row that is there.
                    row = connection.execute(select(job_ticks.c.holder).limit(1)).all()
                    assert len(row) == 1
            read = (time.perf_counter() - began) / CLAIMS
            print(
                f"a tick's claim: {claim * 1000:.2f} ms, {claim / read:.1f}x a one-row read "
                f"({read * 1000:.2f} ms)"
            )
        finally:
            heard.stop()
            one.close()
            other.close()
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
