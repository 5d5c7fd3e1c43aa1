"""Scheduling de-raining requests on one device: same-size images that arrive together share
one `Derainer.batch` call, large images go tile by tile, and what a client sends cannot make
the server compile without bound, hold the device for others' time, or queue without end.

A device runs one computation at a time, and a batch of N costs less than N single calls
wherever the device has parallelism left over (a GPU; on a small CPU the gain is small). So
pending images are grouped by (height, width); a group is run when it holds `max_batch`
images, or `wait_s` after its first arrived, or, if the device was busy, as soon as the device
is free again (whatever joined meanwhile goes in the same batch, up to `max_batch`). All device
work runs in one worker thread, so the event loop stays free to receive uploads and
computations never overlap.

Bounds (docs/serve.md, "Limits"):
- With `buckets`, each image is mirrored up to a bucket (`infer.bucket_sides`), so clients
  choosing sizes compile at most len(sides)**2 programs per batch size, never one per request.
- A request at a working scale (`scale`, infer.Derainer's) is shrunk before all this and its
  rain layer put back after, off the event loop; `auto`'s estimate is one whole-image call on
  thumbnails of one shape for every photo (compiled by the warm-up).
- Images larger than the tile size are de-rained one tile per device call, and between calls
  the device goes to whole images before tiles (`_Device`): a small request waits for at most
  the one call running, however many large images are queued.
- At most `max_queue` requests are admitted at once (`QueueFull` above it); a request whose
  caller gives up (`watched`: deadline or client gone) is cancelled: its queued slot is dropped
  and its remaining tiles are never run. `close()` stops all of it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Sequence

import numpy as np

from sapnet_jax import infer

# The server's tiles: fixed 512 x 512 (not `infer.DEFAULT_TILE`'s balanced 1024), so that every
# large image runs one compiled program, a tile holds the device for seconds rather than tens
# of seconds while small requests wait, and the bucket sides are fractions of it.
SERVER_TILE = 512


class QueueFull(Exception):
  """More requests in flight than `max_queue`: the client may retry later."""


class Closed(Exception):
  """The batcher was closed (the server is shutting down)."""


class DeadlineExceeded(Exception):
  """A request not done within its deadline (`watched`); its work was dropped."""


class ClientGone(Exception):
  """The client disconnected before its answer was ready (`watched`); its work was dropped."""


WHOLE, TILE = 0, 1  # the device's lanes, in the order they are served


class _Device:
  """The device, handed to one caller at a time: waiting whole images (one call each) before
  waiting tiles of large images, each lane first come, first served. An asyncio.Lock alone
  serves in arrival order, so a small image queued behind several large ones waited for one
  tile of each. The price: while small images keep coming, a large one waits (its deadline
  bounds that)."""

  def __init__(self):
    self._busy = False
    self._waiting: tuple[collections.deque, collections.deque] = (collections.deque(),
                                                                  collections.deque())

  @contextlib.asynccontextmanager
  async def use(self, lane: int) -> AsyncIterator[None]:
    if self._busy:
      turn = asyncio.get_running_loop().create_future()
      self._waiting[lane].append(turn)
      try:
        await turn
      except asyncio.CancelledError:
        if turn.done() and not turn.cancelled():  # handed the device as its caller gave up
          self._hand_over()
        elif turn in self._waiting[lane]:
          self._waiting[lane].remove(turn)
        raise
    self._busy = True
    try:
      yield
    finally:
      self._hand_over()

  def _hand_over(self) -> None:
    for waiting in self._waiting:
      while waiting:
        turn = waiting.popleft()
        if not turn.done():
          turn.set_result(None)  # the device stays busy: it now belongs to that waiter
          return
    self._busy = False


@dataclasses.dataclass(frozen=True)
class Result:
  image: np.ndarray  # (H, W, 3) float32, unclamped
  batch_size: int  # images in the device call that computed it (1 for tiled images)
  tiles: int  # device calls the image needed (1 when it went through whole)
  queue_s: float  # from submission to the start of its (first) device call
  compute_s: float  # its device calls, summed over its tiles
  scale: float = 1.0  # the working scale it was de-rained at (infer's `scale`)


@dataclasses.dataclass
class _Job:
  image: np.ndarray
  future: asyncio.Future
  submitted: float


@dataclasses.dataclass
class _Group:
  jobs: list[_Job] = dataclasses.field(default_factory=list)
  full: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class Batcher:
  """`await batcher.derain(image) -> Result`; `close()` stops the worker thread and cancels
  queued work. `buckets` pads images to bucket sizes (the server's choice; off, a result equals
  `Derainer`'s exactly); `max_queue` bounds the requests admitted at once (None: no bound)."""

  def __init__(self, derainer: infer.Derainer, max_batch: int = 4, wait_s: float = 0.005,
               tile: int | None = SERVER_TILE, overlap: int = infer.DEFAULT_OVERLAP,
               *, buckets: bool = False, max_queue: int | None = None):
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if wait_s < 0:
      raise ValueError(f"wait_s must be >= 0, got {wait_s}")
    if max_queue is not None and max_queue < 1:
      raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    self.derainer, self.max_batch, self.wait_s = derainer, max_batch, wait_s
    self.tile, self.overlap, self.buckets, self.max_queue = tile, overlap, buckets, max_queue
    self.in_flight = 0  # requests admitted and not yet answered
    self.device_calls = 0  # finished device calls, tiles counted one by one (for tests, logs)
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sapnet-device")
    self._loop: asyncio.AbstractEventLoop | None = None
    self._groups: dict[tuple[int, int], _Group] = {}
    self._closed = False

  def _bind(self) -> asyncio.AbstractEventLoop:
    # asyncio primitives belong to one event loop; a test client may run each request in a new
    # one, so they are made afresh whenever the loop changes (a server has only one).
    loop = asyncio.get_running_loop()
    if loop is not self._loop:
      if self._closed:  # an app started again after its lifespan ended (a new test client)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sapnet-device")
        self._closed = False
      self._loop, self._device = loop, _Device()
      self._groups = {}
      self._tasks: set[asyncio.Task] = set()  # flushers, kept referenced until they finish
    return loop

  def is_tiled(self, height: int, width: int) -> bool:
    return self.tile is not None and (height > self.tile or width > self.tile)

  def shapes(self) -> list[tuple[int, int]]:
    """The (height, width) of every program the device may run on images up to the tile size
    (with buckets): what a warm-up compiles to answer any such image without compiling."""
    sides = infer.bucket_sides(self.tile)
    return [(h, w) for h in sides for w in sides]

  def warm_up(self, shapes: Sequence[tuple[int, int]]) -> None:
    """Compiles the programs for `shapes` and every batch size up to `max_batch`, and the
    one `auto` runs on thumbnails, now (before serving), in the calling thread."""
    np.asarray(self.derainer.batch(infer.thumbnails(np.zeros((1, 1, 3), np.float32))[0]))
    for h, w in shapes:
      for n in range(1, (1 if self.is_tiled(h, w) else self.max_batch) + 1):
        np.asarray(self.derainer.batch(np.zeros((n, h, w, 3), np.float32)))

  async def derain(self, image: np.ndarray, scale: float | str = 1.0) -> Result:
    """De-rains `image` at `scale` (infer.Derainer's meaning: 1, a number, or "auto", whose
    estimate is one whole-image device call on thumbnails)."""
    loop = self._bind()
    if self.max_queue is not None and self.in_flight >= self.max_queue:
      raise QueueFull(f"{self.in_flight} requests in flight, the most this server takes "
                      f"(--max-queue {self.max_queue})")
    self.in_flight += 1
    try:
      scale = infer.parse_scale(scale)
      if scale == infer.AUTO:
        scale = await self._estimate(image)
      if scale == 1:
        return await self._derain(loop, image)
      small = await asyncio.to_thread(infer.downscale, image, scale)
      result = await self._derain(loop, small)
      out = await asyncio.to_thread(infer.transfer_rain, image, small, result.image)
      return dataclasses.replace(result, image=out, scale=scale)
    finally:
      self.in_flight -= 1

  async def _estimate(self, image: np.ndarray) -> float:
    crops, index = await asyncio.to_thread(infer.thumbnails, image)
    async with self._device.use(WHOLE):
      if self._closed:
        raise Closed("the server is shutting down")
      outputs = await self._call(lambda: np.asarray(self.derainer.batch(crops)))
    statistics = await asyncio.to_thread(infer.rain_statistics, crops, outputs, index,
                                         len(infer.SCALES))
    return infer.choose_scale(*statistics)

  async def _derain(self, loop: asyncio.AbstractEventLoop, image: np.ndarray) -> Result:
    h, w, _ = image.shape
    # Whole-image numpy work runs off the event loop, which keeps receiving uploads.
    padded = (await asyncio.to_thread(infer.pad_to_bucket, image, self.tile) if self.buckets
              else image)
    submitted = time.perf_counter()
    if self.is_tiled(*padded.shape[:2]):
      result = await self._tiled(padded, submitted)
    else:
      result = await self._whole(loop, padded, submitted)
    if padded is not image:
      result = dataclasses.replace(result, image=result.image[:h, :w])
    return result

  async def _whole(self, loop: asyncio.AbstractEventLoop, image: np.ndarray,
                   submitted: float) -> Result:
    h, w, _ = image.shape
    job = _Job(image, loop.create_future(), submitted)
    group = self._groups.get((h, w))
    if group is None:
      group = self._groups[(h, w)] = _Group()
      task = loop.create_task(self._flush((h, w), group))
      self._tasks.add(task)
      task.add_done_callback(self._tasks.discard)
    group.jobs.append(job)
    if len(group.jobs) >= self.max_batch:
      group.full.set()
    return await job.future  # a cancelled caller cancels the future: _flush drops the job

  async def _tiled(self, image: np.ndarray, submitted: float) -> Result:
    tiling = infer.Tiling(image, self.tile, self.overlap)
    first, compute = None, 0.0
    for i in range(len(tiling)):
      # The device is taken per tile, and whole images that queued meanwhile go first, so a
      # small image waits for one tile, not the whole image.
      async with self._device.use(TILE):
        if self._closed:
          raise Closed("the server is shutting down")
        started = time.perf_counter()
        first = started if first is None else first
        await self._call(functools.partial(_add_tile, self.derainer, tiling, i))
        compute += time.perf_counter() - started
    return Result(await asyncio.to_thread(tiling.result), 1, len(tiling), first - submitted,
                  compute)

  async def _call(self, fn: Callable[[], Any]) -> Any:
    """fn() in the device thread (the caller holds the device). A device call cannot be
    interrupted: a cancelled caller keeps the device until it ends, so the next job's queue
    time and the device's one-call-at-a-time rule stay true."""
    future = self._loop.run_in_executor(self._worker, fn)
    try:
      return await asyncio.shield(future)
    except asyncio.CancelledError:
      await asyncio.wait([future])
      raise
    finally:
      if future.done() and not future.cancelled():
        self.device_calls += 1

  async def _flush(self, key: tuple[int, int], group: _Group) -> None:
    """Runs `group` in batches until it is empty, then forgets it (the next image of that size
    starts a new group)."""
    with contextlib.suppress(TimeoutError):
      await asyncio.wait_for(group.full.wait(), self.wait_s)
    while True:
      async with self._device.use(WHOLE):
        # Taken only now: images that arrived while the device was busy join this batch, and
        # those whose caller gave up meanwhile are dropped.
        group.jobs[:] = [job for job in group.jobs if not job.future.done()]
        jobs, group.jobs[:] = group.jobs[:self.max_batch], group.jobs[self.max_batch:]
        last = not group.jobs
        if last:
          del self._groups[key]
        if jobs and not self._closed:
          await self._run(jobs)
      if last:
        return

  async def _run(self, jobs: list[_Job]) -> None:
    started = time.perf_counter()
    try:
      batch = np.stack([job.image for job in jobs])
      out = await self._call(lambda: np.asarray(self.derainer.batch(batch)))
    except Exception as e:  # noqa: BLE001 - handed to each waiting request, which reports it
      for job in jobs:
        if not job.future.done():
          job.future.set_exception(e)
      return
    compute = time.perf_counter() - started
    for i, job in enumerate(jobs):
      if not job.future.done():  # its client may have gone away
        job.future.set_result(Result(out[i], len(jobs), 1, started - job.submitted, compute))

  def close(self) -> None:
    """Stops taking work: queued requests fail with `Closed`, tiled ones stop before their next
    tile, and a device call already running is left to end (it cannot be interrupted)."""
    for group in self._groups.values():
      for job in group.jobs:
        if not job.future.done():
          job.future.set_exception(Closed("the server is shutting down"))
    self._worker.shutdown(wait=False, cancel_futures=True)
    self._closed, self._loop = True, None


def _add_tile(derainer: infer.Derainer, tiling: infer.Tiling, i: int) -> None:
  """Tile i de-rained and blended in, in the device thread (off the event loop)."""
  tiling.add(i, np.asarray(derainer.batch(tiling.window(i)))[0])


async def watched(job: Coroutine[Any, Any, Result], deadline_s: float | None,
                  gone: Awaitable[Any] | None = None) -> Result:
  """Awaits `job` (a `Batcher.derain`), cancelling it, so that its queued slot and remaining
  tiles are dropped, when `deadline_s` passes (DeadlineExceeded) or `gone` completes first
  (ClientGone: the server passes a wait for the client's disconnect)."""
  task = asyncio.ensure_future(job)
  watch = asyncio.ensure_future(gone) if gone is not None else None
  try:
    done, _ = await asyncio.wait({task} | ({watch} if watch else set()), timeout=deadline_s,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
      return task.result()
    if watch is not None and watch in done:
      raise ClientGone("the client disconnected")
    raise DeadlineExceeded(f"not done within the deadline of {deadline_s:g} s")
  finally:
    for t in (task, watch):
      if t is not None and not t.done():
        t.cancel()
