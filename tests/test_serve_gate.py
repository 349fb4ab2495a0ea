"""The admission gate: nothing joins while a batch runs, FIFO up to capacity, cancellations give back."""

import asyncio

import pytest

from dartrt.serve.gate import AdmissionGate


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_waits_while_a_batch_runs_then_admits_in_order_up_to_capacity():
    async def main():
        gate = AdmissionGate(4)
        gate.start(0)  # a batch is running
        order = []

        async def client(name, images):
            await gate.enter(images)
            order.append(name)

        tasks = [asyncio.create_task(client(n, k)) for n, k in (("a", 2), ("b", 1), ("c", 2), ("d", 1))]
        await settle()
        assert order == [] and gate.waiting == 4
        gate.finish()
        await settle()
        assert order == ["a", "b"] and gate.admitted == 3  # c (2 images) does not fit; d waits behind it (FIFO)
        gate.start(3)
        gate.finish()
        await settle()
        assert order == ["a", "b", "c", "d"]
        await asyncio.gather(*tasks)

    run(main())


def test_admits_at_once_while_idle():
    async def main():
        gate = AdmissionGate(2)
        await gate.enter(1)
        await gate.enter(1)
        assert gate.admitted == 2
        blocked = asyncio.create_task(gate.enter(1))
        await settle()
        assert not blocked.done()
        gate.start(2)
        gate.finish()
        await blocked

    run(main())


def test_a_request_cancelled_while_waiting_or_admitted_gives_its_place_back():
    async def main():
        gate = AdmissionGate(2)
        gate.start(0)
        waiting = asyncio.create_task(gate.enter(2))
        behind = asyncio.create_task(gate.enter(1))
        await settle()
        waiting.cancel()
        await settle()
        assert gate.waiting == 1
        gate.finish()
        await behind
        assert gate.admitted == 1
        gate.withdraw(1)  # admitted, then its client went away before the batch started
        assert gate.admitted == 0
        await gate.enter(2)  # the whole capacity is free again

    run(main())


def test_a_request_larger_than_the_gate_is_refused():
    with pytest.raises(ValueError):
        run(AdmissionGate(2).enter(3))
