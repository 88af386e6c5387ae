"""A model turn's added latency through BridgedRuntime(OfflineRuntime), next to
verifiers' own SubprocessRuntime, in one run (docs/verifiers.md quotes it).

    .venv-verifiers/bin/python tests/adapters/bench_verifiers.py [ROLLOUTS]

Each round runs one rollout on each runtime (interleaved, so load hits all
alike): verifiers' Agent, its interception server, the host model of
vf_kit (it answers at once) and the agent of vf_kit, which times each model
turn as the openai SDK sees it (request sent to the stream's last event)
and leaves the times in its work directory. Two turns per rollout: the
first pays for the SDK's lazy imports inside the agent (hundreds of ms,
whatever the runtime), so the figures are the second, warm turns; the
first turns' medians are printed apart.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

from bridgeproto_adapters.verifiers import BridgedRuntime, OfflineRuntime
from sandbox_kinds import SITE_PACKAGES
from vf_kit import make_agent, make_task, running_model


def runtimes() -> dict[str, Callable[[], Any]]:
    from verifiers.v1.runtimes import SubprocessConfig, SubprocessRuntime

    return {
        "SubprocessRuntime (host, direct)": lambda: SubprocessRuntime(SubprocessConfig()),
        "BridgedRuntime(OfflineRuntime), stream": lambda: BridgedRuntime(
            OfflineRuntime(ro=[SITE_PACKAGES])
        ),
        "BridgedRuntime(OfflineRuntime), mailbox": lambda: BridgedRuntime(
            OfflineRuntime(ro=[SITE_PACKAGES], live_processes=False)
        ),
    }


async def main(rounds: int) -> None:
    warm: dict[str, list[float]] = {name: [] for name in runtimes()}
    first: dict[str, list[float]] = {name: [] for name in runtimes()}
    async with running_model() as model:
        agent = make_agent(model)
        for _ in range(rounds):
            for name, make in runtimes().items():
                runtime = make()
                await runtime.start()
                try:
                    trace = await agent.run(make_task(), runtime=runtime)
                    assert trace.ok, trace.errors
                    opening, *rest = json.loads(await runtime.read("turns.json"))
                finally:
                    await runtime.stop()
                first[name].append(opening)
                warm[name] += rest
    direct = statistics.median(warm["SubprocessRuntime (host, direct)"])
    print(f"{rounds} rollouts per runtime; a warm model turn as the agent saw it:")
    for name, times in warm.items():
        times.sort()
        median = statistics.median(times)
        p90 = times[int(0.9 * (len(times) - 1))]
        added = (
            "" if name.startswith("Subprocess") else f"  added {1000 * (median - direct):+.1f} ms"
        )
        opening = 1000 * statistics.median(first[name])
        print(
            f"  {name:40} median {1000 * median:5.1f} ms, p90 {1000 * p90:5.1f} ms"
            f"{added}  (first turns: median {opening:.0f} ms)"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
