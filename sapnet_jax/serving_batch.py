"""Batching de-raining requests on one device: same-size images that arrive together share one
`Derainer.batch` call.

A device runs one computation at a time, and a batch of N costs less than N single calls
wherever the device has parallelism left over (a GPU; on a small CPU the gain is small). So
pending images are grouped by (height, width); a group is run when it holds `max_batch`
images, or `wait_s` after its first arrived, or, if the device was busy, as soon as the device
is free again (whatever joined meanwhile goes in the same batch, up to `max_batch`). Images
larger than the tile size go through the tiled path alone. All device work runs in one worker
thread, so the event loop stays free to receive uploads and computations never overlap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time

import numpy as np

from sapnet_jax import infer


@dataclasses.dataclass(frozen=True)
class Result:
  image: np.ndarray  # (H, W, 3) float32, unclamped
  batch_size: int  # images in the device call that computed it (1 for tiled images)
  tiles: int  # device calls the image needed (1 when it went through whole)
  queue_s: float  # from submission to the start of its device call
  compute_s: float  # its device call (all tiles)


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
  """`await batcher.derain(image) -> Result`; `close()` stops the worker thread."""

  def __init__(self, derainer: infer.Derainer, max_batch: int = 4, wait_s: float = 0.005,
               tile: int | None = infer.DEFAULT_TILE, overlap: int = infer.DEFAULT_OVERLAP):
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if wait_s < 0:
      raise ValueError(f"wait_s must be >= 0, got {wait_s}")
    self.derainer, self.max_batch, self.wait_s = derainer, max_batch, wait_s
    self.tile, self.overlap = tile, overlap
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sapnet-device")
    self._loop: asyncio.AbstractEventLoop | None = None
    self._closed = False

  def _bind(self) -> asyncio.AbstractEventLoop:
    # asyncio primitives belong to one event loop; a test client may run each request in a new
    # one, so they are made afresh whenever the loop changes (a server has only one).
    loop = asyncio.get_running_loop()
    if loop is not self._loop:
      if self._closed:  # an app started again after its lifespan ended (a new test client)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sapnet-device")
        self._closed = False
      self._loop, self._device = loop, asyncio.Lock()
      self._groups: dict[tuple[int, int], _Group] = {}
      self._tasks: set[asyncio.Task] = set()  # flushers, kept referenced until they finish
    return loop

  def is_tiled(self, height: int, width: int) -> bool:
    return self.tile is not None and (height > self.tile or width > self.tile)

  async def derain(self, image: np.ndarray) -> Result:
    loop = self._bind()
    h, w, _ = image.shape
    submitted = time.perf_counter()
    if self.is_tiled(h, w):
      async with self._device:
        started = time.perf_counter()
        out, tiles = await loop.run_in_executor(self._worker, self._tiled, image)
      return Result(out, 1, tiles, started - submitted, time.perf_counter() - started)
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
    return await job.future

  def _tiled(self, image: np.ndarray) -> tuple[np.ndarray, int]:
    """The tiled result and its tile count (as the Derainer reports it)."""
    total = []
    out = self.derainer(image, tile=self.tile, overlap=self.overlap,
                        progress=lambda done, n: total.append(n))
    return out, total[-1]

  async def _flush(self, key: tuple[int, int], group: _Group) -> None:
    """Runs `group` in batches until it is empty, then forgets it (the next image of that size
    starts a new group)."""
    with contextlib.suppress(TimeoutError):
      await asyncio.wait_for(group.full.wait(), self.wait_s)
    while True:
      async with self._device:
        # Taken only now: images that arrived while the device was busy join this batch.
        jobs, group.jobs[:] = group.jobs[:self.max_batch], group.jobs[self.max_batch:]
        last = not group.jobs
        if last:
          del self._groups[key]
        await self._run(jobs)
      if last:
        return

  async def _run(self, jobs: list[_Job]) -> None:
    started = time.perf_counter()
    try:
      batch = np.stack([job.image for job in jobs])
      out = await self._loop.run_in_executor(
          self._worker, lambda: np.asarray(self.derainer.batch(batch)))
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
    self._worker.shutdown(wait=False, cancel_futures=True)
    self._closed, self._loop = True, None
