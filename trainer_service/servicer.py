"""TrainerService handlers: validate, convert, call the job layer, convert back."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc

from chargpt.errors import InvalidArgumentError, PermissionDeniedError
from chargpt.server.tenancy.audit import AuditLog, audits_refusals
from chargpt.server.tenancy.principal import check_changeable, check_visible, current_principal, require_write
from chargpt.server.tenancy.scopes import Scope
from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from chargpt.wire.checkpoint_kinds import KIND_NAMES
from trainer_service import messages
from trainer_service.corpora.library import CorpusLibrary
from trainer_service.corpora.read import read_corpus
from trainer_service.device_report import device_report
from trainer_service.jobs import checkpoints
from trainer_service.jobs.events import EventHub
from trainer_service.jobs.layout import JobDir
from trainer_service.jobs.manager import JobManager
from trainer_service.jobs.parent import resolve_init_from
from trainer_service.jobs.plan import DeviceProber, build_plan
from trainer_service.metrics import TrainerMetrics
from trainer_service.model_import import ModelImporter
from trainer_service.quotas import TrainerQuotas
from trainer_service.settings import TrainerSettings
from trainer_service.store import Store
from trainer_service.store_records import JobRecord

MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1000, 100
TOKEN_PREFIX = "jobs-before:"
SPLIT_TO_PROTO = {"all": trainer_pb2.CORPUS_SPLIT_UNSPECIFIED, "train": trainer_pb2.CORPUS_SPLIT_TRAIN,
                  "validation": trainer_pb2.CORPUS_SPLIT_VALIDATION}
PROTO_TO_SPLIT = {v: k for k, v in SPLIT_TO_PROTO.items()}
IMPORT_FORMATS = messages.enum_choices(trainer_pb2.ImportFormat.DESCRIPTOR)  # IMPORT_FORMAT_HF -> "hf"
# Each RPC's tenancy scope (tests/tenancy/test_trainer_isolation.py runs every one as another tenant).
RPC_SCOPES: dict[str, Scope] = {
    "GetDeviceInfo": Scope.OPEN,
    "UploadCorpus": Scope.CREATE, "ListCorpora": Scope.OWN, "GetCorpus": Scope.OWN, "ReadCorpus": Scope.OWN,
    "DeleteCorpus": Scope.OWN,
    "CreateTrainingJob": Scope.CREATE, "GetTrainingJob": Scope.OWN, "ListTrainingJobs": Scope.OWN,
    "CancelTrainingJob": Scope.OWN, "ResumeTrainingJob": Scope.OWN, "WatchTrainingJob": Scope.OWN,
    "ListCheckpoints": Scope.OWN, "DownloadCheckpoint": Scope.OWN,
    "ImportModel": Scope.CREATE,
}


def encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{TOKEN_PREFIX}{seq}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if text.startswith(TOKEN_PREFIX):
            return int(text.removeprefix(TOKEN_PREFIX))
    except (ValueError, binascii.Error, UnicodeError):
        pass
    raise InvalidArgumentError("page_token", "not a token from a previous ListTrainingJobs response")


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Every RPC of the v1 API."""

    def __init__(self, settings: TrainerSettings, store: Store, corpora: CorpusLibrary, jobs: JobManager,
                 hub: EventHub, metrics: TrainerMetrics, prober: DeviceProber) -> None:
        self.settings, self.store, self.corpora, self.jobs = settings, store, corpora, jobs
        self.hub, self.metrics, self.prober = hub, metrics, prober
        self.importer = ModelImporter(store, jobs.jobs_dir, settings.max_import_bytes)
        self.quotas = TrainerQuotas(store, jobs.policy, jobs.plan)
        self.audit = AuditLog(settings.audit_log)
        self._admit = asyncio.Lock()  # a quota check and the job it admits, one request at a time

    def _visible_job(self, job_id: str) -> JobRecord:
        """The job, if the caller may see it; another tenant's reads as NOT_FOUND, exactly like a missing one."""
        job = self.store.get_job(job_id)
        check_visible(job.owner, f"training job {job_id!r}")
        return job

    def _changeable_job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        check_changeable(job.owner, f"training job {job_id!r}")
        return job

    async def GetDeviceInfo(self, request: trainer_pb2.GetDeviceInfoRequest,
                            context: grpc.aio.ServicerContext) -> trainer_pb2.GetDeviceInfoResponse:
        if request.recalibrate and not current_principal().is_admin:  # it measures the host every tenant shares
            raise PermissionDeniedError("recalibrate needs an admin key")
        return await asyncio.to_thread(device_report, self.prober, request.recalibrate)

    # ---- corpora

    @audits_refusals("upload", "corpus")
    async def UploadCorpus(self, request_iterator: AsyncIterator[trainer_pb2.UploadCorpusRequest],
                           context: grpc.aio.ServicerContext) -> trainer_pb2.UploadCorpusResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError("header", "the first message must be the corpus header")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") == "header":
                    raise InvalidArgumentError("header", "only the first message may be a header")
                yield message.data

        tenant = require_write("UploadCorpus").tenant
        record, created = await self.corpora.upload(first.header.name, first.header.description, chunks(), tenant,
                                                    self.quotas.corpus_bytes_check(tenant))
        self.audit.record("upload", "corpus", record.corpus_id, name=record.name, size_bytes=record.size_bytes,
                          created=created)
        self.metrics.refresh_store_gauges(self.store)
        return trainer_pb2.UploadCorpusResponse(corpus=messages.corpus_proto(record), created=created)

    async def ListCorpora(self, request: trainer_pb2.ListCorporaRequest,
                          context: grpc.aio.ServicerContext) -> trainer_pb2.ListCorporaResponse:
        records = await self.corpora.list()
        return trainer_pb2.ListCorporaResponse(corpora=[messages.corpus_proto(r) for r in records])

    async def GetCorpus(self, request: trainer_pb2.GetCorpusRequest,
                        context: grpc.aio.ServicerContext) -> trainer_pb2.GetCorpusResponse:
        record = await self.corpora.resolve(request.corpus_id)
        return trainer_pb2.GetCorpusResponse(corpus=messages.corpus_proto(record))

    @audits_refusals("read", "corpus", lambda request: request.corpus_id)
    async def ReadCorpus(self, request: trainer_pb2.ReadCorpusRequest,
                         context: grpc.aio.ServicerContext) -> trainer_pb2.ReadCorpusResponse:
        if request.split not in PROTO_TO_SPLIT:
            raise InvalidArgumentError("split", f"unknown corpus split {request.split}")
        record = await self.corpora.resolve(request.corpus_id)
        read = await read_corpus(record, PROTO_TO_SPLIT[request.split], request.offset, request.length)
        self.audit.record("read", "corpus", record.corpus_id, offset=read.offset, chars=len(read.text))
        return trainer_pb2.ReadCorpusResponse(corpus_id=record.corpus_id, split=request.split, offset=read.offset,
                                              split_chars=read.split_chars, text=read.text)

    @audits_refusals("delete", "corpus", lambda request: request.corpus_id)
    async def DeleteCorpus(self, request: trainer_pb2.DeleteCorpusRequest,
                           context: grpc.aio.ServicerContext) -> trainer_pb2.DeleteCorpusResponse:
        record = await self.corpora.delete(request.corpus_id)
        self.audit.record("delete", "corpus", record.corpus_id, name=record.name)
        self.metrics.refresh_store_gauges(self.store)
        return trainer_pb2.DeleteCorpusResponse()

    # ---- jobs

    @audits_refusals("create", "job")
    async def CreateTrainingJob(self, request: trainer_pb2.CreateTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> trainer_pb2.CreateTrainingJobResponse:
        if len(request.display_name) > 256:
            raise InvalidArgumentError("display_name", f"at most 256 characters (got {len(request.display_name)})")
        caller = require_write("CreateTrainingJob")
        corpus = await self.corpora.resolve(request.corpus_id)
        wanted = messages.job_request(request)
        job_id = uuid.uuid4().hex
        parent = None
        if wanted.init_from is not None:
            parent = await asyncio.to_thread(resolve_init_from, wanted.init_from, self.settings.data_dir,
                                             self.store, self.jobs.job_dir, JobDir(self.jobs.job_dir(job_id)).init_from)
        try:
            plan = await asyncio.to_thread(build_plan, job_id, wanted, corpus, self.prober,
                                           self.settings.max_processes_per_job, self.settings.tensorboard,
                                           self.jobs.executor.max_nodes, parent)
            async with self._admit:
                self.quotas.check_job(caller.tenant, plan)
                job = await self.jobs.create(job_id, wanted.display_name, plan, corpus, parent, caller.tenant,
                                             wanted.priority)
        finally:
            if parent is not None:
                parent.close()
        self.audit.record("create", "job", job.job_id, corpus_id=corpus.corpus_id, priority=wanted.priority,
                          init_from=wanted.init_from.job_id if wanted.init_from else None)
        self.metrics.jobs_created.labels(tenant=self.metrics.tenant_label(caller.tenant)).inc()
        return trainer_pb2.CreateTrainingJobResponse(job=self._job(job.job_id))

    def _job(self, job_id: str) -> trainer_pb2.TrainingJob:
        return messages.job_proto(self.store.get_job(job_id), self.jobs.plan(job_id))

    async def GetTrainingJob(self, request: trainer_pb2.GetTrainingJobRequest,
                             context: grpc.aio.ServicerContext) -> trainer_pb2.GetTrainingJobResponse:
        return trainer_pb2.GetTrainingJobResponse(job=self._job(self._visible_job(request.job_id).job_id))

    async def ListTrainingJobs(self, request: trainer_pb2.ListTrainingJobsRequest,
                               context: grpc.aio.ServicerContext) -> trainer_pb2.ListTrainingJobsResponse:
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgumentError("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (got {page_size})")
        states = []
        for value in request.states:
            if value not in messages.PROTO_TO_STATE:
                raise InvalidArgumentError("states", f"unknown job state {value}")
            states.append(messages.PROTO_TO_STATE[value])
        before = decode_page_token(request.page_token)
        caller = current_principal()
        records = self.store.list_jobs(states, before, page_size + 1, None if caller.is_admin else caller.tenant)
        page = records[:page_size]
        token = encode_page_token(page[-1].seq) if len(records) > page_size else ""
        jobs = [messages.job_proto(r, self.jobs.plan(r.job_id)) for r in page]
        return trainer_pb2.ListTrainingJobsResponse(jobs=jobs, next_page_token=token)

    @audits_refusals("cancel", "job", lambda request: request.job_id)
    async def CancelTrainingJob(self, request: trainer_pb2.CancelTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> trainer_pb2.CancelTrainingJobResponse:
        job = await self.jobs.cancel(self._changeable_job(request.job_id).job_id)
        self.audit.record("cancel", "job", job.job_id, state=job.state)
        return trainer_pb2.CancelTrainingJobResponse(job=self._job(job.job_id))

    @audits_refusals("resume", "job", lambda request: request.job_id)
    async def ResumeTrainingJob(self, request: trainer_pb2.ResumeTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> trainer_pb2.ResumeTrainingJobResponse:
        job = self._changeable_job(request.job_id)
        async with self._admit:
            self.quotas.check_job(job.owner, self.jobs.plan(job.job_id))
            job = await self.jobs.resume(job.job_id)
        self.audit.record("resume", "job", job.job_id)
        return trainer_pb2.ResumeTrainingJobResponse(job=self._job(job.job_id))

    async def WatchTrainingJob(self, request: trainer_pb2.WatchTrainingJobRequest,
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[trainer_pb2.WatchTrainingJobResponse]:
        if request.after_sequence < 0:
            raise InvalidArgumentError("after_sequence", f"must be >= 0 (got {request.after_sequence})")
        self._visible_job(request.job_id)  # NOT_FOUND before the stream starts
        async for event in self.hub.watch(request.job_id, request.after_sequence):
            yield messages.event_proto(event)

    # ---- checkpoints

    async def ListCheckpoints(self, request: trainer_pb2.ListCheckpointsRequest,
                              context: grpc.aio.ServicerContext) -> trainer_pb2.ListCheckpointsResponse:
        job = self._visible_job(request.job_id)
        found = await asyncio.to_thread(checkpoints.list_checkpoints, self.jobs.job_dir(job.job_id))
        return trainer_pb2.ListCheckpointsResponse(
            checkpoints=[messages.checkpoint_proto(job.job_id, info) for info in found])

    @audits_refusals("download", "checkpoint", lambda request: request.job_id)
    async def DownloadCheckpoint(self, request: trainer_pb2.DownloadCheckpointRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[trainer_pb2.DownloadCheckpointResponse]:
        chunk_size = checkpoints.chunk_size_or_default(request.chunk_size)
        if request.kind not in KIND_NAMES:
            raise InvalidArgumentError("kind", f"unknown checkpoint kind {request.kind}")
        job = self._visible_job(request.job_id)
        snapshot = await asyncio.to_thread(checkpoints.open_snapshot, self.jobs.job_dir(job.job_id),
                                           KIND_NAMES[request.kind])
        self.audit.record("download", "checkpoint", job.job_id, kind=KIND_NAMES[request.kind],
                          step=snapshot.info.manifest.training.step)
        try:
            files = [trainer_pb2.CheckpointFile(name=f.name, size_bytes=f.size_bytes, sha256=f.sha256)
                     for f in snapshot.files]
            yield trainer_pb2.DownloadCheckpointResponse(header=trainer_pb2.CheckpointArchiveHeader(
                checkpoint=messages.checkpoint_proto(job.job_id, snapshot.info), files=files))
            chunks = snapshot.chunks(chunk_size)
            while piece := await asyncio.to_thread(next, chunks, None):
                name, offset, data = piece
                yield trainer_pb2.DownloadCheckpointResponse(chunk=trainer_pb2.CheckpointChunk(
                    file_name=name, offset=offset, data=data, sha256=_sha256(data)))
        finally:
            snapshot.close()

    # ---- imported models

    @audits_refusals("import", "model")
    async def ImportModel(self, request_iterator: AsyncIterator[trainer_pb2.ImportModelRequest],
                          context: grpc.aio.ServicerContext) -> trainer_pb2.ImportModelResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError("header", "the first message must be the import header")
        tenant = require_write("ImportModel").tenant
        header = first.header
        if header.format not in IMPORT_FORMATS:
            raise InvalidArgumentError("header.format", f"choose {' or '.join(IMPORT_FORMATS.values())} "
                                       f"(got {header.format})")

        async def chunks() -> AsyncIterator[trainer_pb2.CheckpointChunk]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgumentError("header", "only the first message may be a header")
                yield message.chunk

        job_id, checkpoint = await self.importer.import_model(header.name, IMPORT_FORMATS[header.format],
                                                              header.files, chunks(), tenant)
        self.audit.record("import", "model", job_id, format=IMPORT_FORMATS[header.format], name=header.name)
        await self.hub.poll_once()
        return trainer_pb2.ImportModelResponse(job=self._job(job_id),
                                               checkpoint=messages.checkpoint_proto(job_id, checkpoint))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
