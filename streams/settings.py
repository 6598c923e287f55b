"""The app's settings, read once from ``VREC_*`` environment variables at the edge.

:class:`Settings` holds the flat fields (each one a ``VREC_<NAME>`` variable, and the name that
overrides take: ``Settings(top_k=5)``, ``model_copy(update=...)``, ``vrec eval --set top_k=5``)
and hands them out in sections, one small frozen object per part of the app
(``settings.streaming``, ``.tables``, ``.worker``, ``.web``, ``.vector_store``, ``.encoder``,
``.images``, ``.users``, ``.popularity``, ``.ranking``, ``.day_close``, ``.event_time``,
``.experiment``): the entry points (``vrec`` commands, the worker, the harness) read
:class:`Settings`, and the code below them takes the section it needs. Sections are built from
the fields each time they are read, so an override always shows in its section.

Defaults are the embedded mode: a local Kafka broker on 127.0.0.1, Qdrant Edge on disk under
``data_dir``, in-memory Faust tables (``memory://``, rebuilt from their changelog topics at
start), one partition per topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.eventtime import EventTimeConfig

REPO_ROOT = Path(__file__).resolve().parent.parent

ExcludePolicy = Literal["none", "purchased", "seen"]
#: What a worker can run: "encode" (products -> vector store and item-embeddings) and
#: "recommend" (views/purchases -> user table -> recommendations, with the item replica)
ROLES = ("encode", "recommend")


class TopicNames(BaseSettings):
    """Kafka topic names; every name gets ``VREC_TOPIC_PREFIX`` in front."""

    model_config = SettingsConfigDict(env_prefix="VREC_TOPIC_", extra="ignore")

    prefix: str = ""
    products: str = "products"
    views: str = "views"
    purchases: str = "purchases"
    user_events: str = "user-events"
    recommendations: str = "recommendations"
    trending: str = "trending"
    item_embeddings: str = "item-embeddings"
    dead_letters: str = "dead-letters"

    def full(self, name: str) -> str:
        return f"{self.prefix}{getattr(self, name)}"


class KafkaSecurity(BaseSettings):
    """How every Kafka client of vrec authenticates and encrypts (``VREC_KAFKA_*``).

    One group for the Faust app, the replica consumer, the admin, replay and bench clients;
    ``streams.kafka_security`` turns it into each client's keyword arguments.
    """

    model_config = SettingsConfigDict(env_prefix="VREC_KAFKA_", extra="ignore")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    # SSL / SASL_SSL: CA bundle that signed the broker's certificate ("" = the system's CAs);
    # certfile + keyfile (PEM) for client-certificate (mutual TLS) authentication
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: SecretStr = SecretStr("")
    ssl_check_hostname: bool = True


# -- sections -----------------------------------------------------------------------------------
# Each section is a frozen dataclass whose FIELDS map its attribute names to the flat Settings
# fields they are read from; every flat field belongs to exactly one section
# (tests/unit/test_settings_sections.py).


@dataclass(frozen=True)
class StreamingSettings:
    """The Kafka cluster, its topics and the Faust app's client settings."""

    FIELDS: ClassVar[dict[str, str]] = {
        "broker": "broker",
        "security": "kafka",
        "topics": "topics",
        "app_id": "app_id",
        "partitions": "partitions",
        "processing_guarantee": "processing_guarantee",
        "session_timeout_s": "session_timeout_s",
        "producer_linger_s": "producer_linger_s",
        "producer_batch_bytes": "producer_batch_bytes",
    }

    broker: str
    security: KafkaSecurity
    topics: TopicNames
    app_id: str
    partitions: int
    processing_guarantee: str
    session_timeout_s: float
    producer_linger_s: float
    producer_batch_bytes: int

    @property
    def broker_url(self) -> str:
        return self.broker if "://" in self.broker else f"kafka://{self.broker}"

    @property
    def bootstrap(self) -> str:
        return self.broker.split("://", 1)[-1]


@dataclass(frozen=True)
class TableSettings:
    """Where the Faust tables live (``memory://`` or ``rocksdb://``)."""

    FIELDS: ClassVar[dict[str, str]] = {"store": "table_store"}

    store: str


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker runs, where it keeps its files and how it logs."""

    FIELDS: ClassVar[dict[str, str]] = {
        "roles": "roles",
        "replicate_items": "replicate_items",
        "data_dir": "data_dir",
        "log_format": "log_format",
        "gc_threshold": "gc_threshold",
        "faust_fast_dispatch": "faust_fast_dispatch",
        "fetch_wait_s": "fetch_wait_s",
        "fetch_backoff_s": "fetch_backoff_s",
    }

    roles: frozenset[str]
    replicate_items: bool
    data_dir: Path
    log_format: str
    gc_threshold: str
    faust_fast_dispatch: bool
    fetch_wait_s: float
    fetch_backoff_s: float


@dataclass(frozen=True)
class WebSettings:
    """The worker's web server (pages, JSON API, /metrics) and who may use it."""

    FIELDS: ClassVar[dict[str, str]] = {
        "enabled": "web_enabled",
        "host": "web_host",
        "port": "web_port",
        "token": "web_token",
        "open_writes": "web_open_writes",
        "auth_reads": "web_auth_reads",
        "debug_pages": "web_debug_pages",
    }

    enabled: bool
    host: str
    port: int
    token: SecretStr
    open_writes: bool
    auth_reads: bool
    debug_pages: bool

    @property
    def tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens (``token`` split at commas)."""
        raw = self.token.get_secret_value()
        return tuple(t.strip() for t in raw.split(",") if t.strip())


@dataclass(frozen=True)
class VectorStoreSettings:
    """The item vector store: Qdrant Edge on disk, a Qdrant server, or Qdrant in-process."""

    FIELDS: ClassVar[dict[str, str]] = {
        "kind": "store",
        "qdrant_url": "qdrant_url",
        "qdrant_api_key": "qdrant_api_key",
        "collection": "collection",
    }

    kind: str
    qdrant_url: str
    qdrant_api_key: SecretStr | None
    collection: str


@dataclass(frozen=True)
class EncoderSettings:
    """The image (and text) encoder, its batches, decode limits, heads and embedding cache."""

    FIELDS: ClassVar[dict[str, str]] = {
        "model_dir": "model_dir",
        "model": "encoder_model",
        "batch": "encoder_batch",
        "batch_wait_s": "encoder_batch_wait_s",
        "threads": "encoder_threads",
        "device": "device",
        "max_image_bytes": "max_image_bytes",
        "max_image_pixels": "max_image_pixels",
        "max_batch_pixels": "max_batch_pixels",
        "decode_max_side": "decode_max_side",
        "classifier": "classifier",
        "embedding_cache": "embedding_cache",
        "text_weight": "text_weight",
    }

    model_dir: Path
    model: str
    batch: int
    batch_wait_s: float
    threads: int
    device: str
    max_image_bytes: int
    max_image_pixels: int
    max_batch_pixels: int
    decode_max_side: int
    classifier: str
    embedding_cache: str
    text_weight: float

    @property
    def classifier_heads(self) -> list[str]:
        """The ``classifier`` heads, split at commas."""
        return [h.strip() for h in self.classifier.split(",") if h.strip()]


@dataclass(frozen=True)
class ImageSettings:
    """Where product images may come from: files under ``roots``, or fetched ``image_url``s.

    ``roots`` is derived (the image root, then HTTP uploads under ``data_dir``)."""

    FIELDS: ClassVar[dict[str, str]] = {
        "root": "image_root",
        "fetch_allow_hosts": "image_fetch_allow_hosts",
        "fetch_timeout_s": "image_fetch_timeout_s",
        "fetch_total_s": "image_fetch_total_s",
        "fetch_max_redirects": "image_fetch_max_redirects",
        "fetch_concurrency": "image_fetch_concurrency",
        "fetch_retries": "image_fetch_retries",
    }

    root: Path | None
    fetch_allow_hosts: str
    fetch_timeout_s: float
    fetch_total_s: float
    fetch_max_redirects: int
    fetch_concurrency: int
    fetch_retries: int
    roots: tuple[Path, Path]


@dataclass(frozen=True)
class UserSettings:
    """How interactions fold into a user's state, and the users agent's micro-batches."""

    FIELDS: ClassVar[dict[str, str]] = {
        "half_life_days": "half_life_days",
        "weight_view": "weight_view",
        "weight_purchase": "weight_purchase",
        "history_len": "history_len",
        "max_seen": "max_seen",
        "batch_max": "batch_max",
        "batch_within_s": "batch_within_s",
        "batch_backlog": "batch_backlog",
        "batch_backlog_within_s": "batch_backlog_within_s",
    }

    half_life_days: float
    weight_view: float
    weight_purchase: float
    history_len: int
    max_seen: int
    batch_max: int
    batch_within_s: float
    batch_backlog: int
    batch_backlog_within_s: float

    @property
    def kind_weights(self) -> dict[str, float]:
        return {"view": self.weight_view, "purchase": self.weight_purchase}


@dataclass(frozen=True)
class PopularitySettings:
    """The shop-wide counts: trending (window, buckets, publishing) and co-purchase rows."""

    FIELDS: ClassVar[dict[str, str]] = {
        "window_days": "trending_window_days",
        "bucket_s": "trending_bucket_s",
        "distinct_buyers": "trending_distinct_buyers",
        "channel_weights": "trending_channel_weights",
        "publish_s": "trending_publish_s",
        "copurchase_neighbours": "copurchase_neighbours",
    }

    window_days: float
    bucket_s: int
    distinct_buyers: bool
    channel_weights: dict[int, int]
    publish_s: float
    copurchase_neighbours: int


@dataclass(frozen=True)
class RankingSettings:
    """What the ranking reads (streams.recommend.RankConfig); an experiment's variants may
    override exactly these fields."""

    FIELDS: ClassVar[dict[str, str]] = {
        name: name
        for name in (
            "ranker",
            "top_k",
            "exclude",
            "personalise_after",
            "w_repurchase",
            "w_sibling",
            "w_copurchase",
            "w_visual",
            "w_popularity",
            "rep_price_exponent",
            "sibling_pop_boost",
            "cf_seeds",
            "cf_per_seed",
            "cf_candidates",
            "pop_candidates",
        )
    }

    ranker: str
    top_k: int
    exclude: str
    personalise_after: int
    w_repurchase: float
    w_sibling: float
    w_copurchase: float
    w_visual: float
    w_popularity: float
    rep_price_exponent: float
    sibling_pop_boost: float
    cf_seeds: int
    cf_per_seed: int
    cf_candidates: int
    pop_candidates: int


@dataclass(frozen=True)
class DayCloseSettings:
    """The re-ranking of the users active in the days a clock mark closes."""

    FIELDS: ClassVar[dict[str, str]] = {
        "refresh": "day_close_refresh",
        "users_per_slice": "day_close_slice",
    }

    refresh: bool
    users_per_slice: int


@dataclass(frozen=True)
class ExperimentSettings:
    """The A/B/n experiment (streams/experiment.py)."""

    FIELDS: ClassVar[dict[str, str]] = {"variants": "variants", "shadow": "variants_shadow"}

    variants: str | None
    shadow: bool


#: section name (a property of Settings) -> its class; EventTimeConfig is streams.eventtime's own
SECTIONS: dict[str, Any] = {
    "streaming": StreamingSettings,
    "tables": TableSettings,
    "worker": WorkerSettings,
    "web": WebSettings,
    "vector_store": VectorStoreSettings,
    "encoder": EncoderSettings,
    "images": ImageSettings,
    "users": UserSettings,
    "popularity": PopularitySettings,
    "ranking": RankingSettings,
    "day_close": DayCloseSettings,
    "event_time": EventTimeConfig,
    "experiment": ExperimentSettings,
}
#: EventTimeConfig's fields and the flat fields they are read from
EVENT_TIME_FIELDS = {
    "max_future_s": "event_time_max_future_s",
    "max_jump_s": "event_time_max_jump_s",
    "max_late_s": "event_time_max_late_s",
    "policy": "event_time_policy",
}


def section_fields(name: str) -> dict[str, str]:
    """A section's attribute -> flat Settings field (derived attributes left out)."""
    return EVENT_TIME_FIELDS if name == "event_time" else SECTIONS[name].FIELDS


class Settings(BaseSettings):
    """Everything a worker, the replay tools and the CLI need: flat ``VREC_*`` fields, read in
    sections (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="VREC_", extra="ignore")

    # -- streaming: Kafka / Faust ---------------------------------------------------------------
    broker: str = Field("127.0.0.1:9092", description="bootstrap address (host:port)")
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topics: TopicNames = Field(default_factory=TopicNames)
    app_id: str = Field("vrec", description="Faust app id: consumer group, changelog prefix")
    partitions: int = Field(1, ge=1, description="partitions of the topics vrec creates")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # how long a silent worker keeps its partitions (also the rebalance timeout)
    session_timeout_s: float = Field(20.0, gt=0, description="consumer group session timeout")
    # the producer waits this long to fill a batch: fewer, larger produce requests (Faust's
    # default 0 sent one request per record under load: 12% of the worker in socket writes)
    producer_linger_s: float = Field(0.005, ge=0)
    producer_batch_bytes: int = Field(256 * 1024, ge=1024)

    # -- tables ---------------------------------------------------------------------------------
    # memory:// (the default) rebuilds tables from their changelog topics at start (what the
    # crash tests verify); rocksdb:// restarts faster but lost updates after SIGKILL in our runs
    table_store: str = "memory://"

    # -- worker ---------------------------------------------------------------------------------
    # what this worker runs: a set of ROLES, in the environment comma-separated
    # (VREC_ROLES=encode,recommend). Split them to run the encoder as its own (GPU) service.
    roles: Annotated[frozenset[str], NoDecode] = frozenset(ROLES)
    # a recommend worker materialises the whole item index from item-embeddings (scale-out)
    replicate_items: bool = True
    # Faust's table files (faust/), Qdrant Edge (qdrant/), HTTP uploads (uploads/), images/
    data_dir: Path = REPO_ROOT / "var"
    # "json": one JSON object per log line (streams/logs.py); "text": human-readable
    log_format: Literal["text", "json"] = "text"
    # the worker's cyclic garbage collector: "gen0,gen1,gen2" thresholds (gc.set_threshold);
    # "": Python's own (700,10,10). With those, collections over the worker's large heap took
    # about a quarter of the fold-and-rank CPU (streams/util.py tune_gc)
    gc_threshold: str = "50000,20,100"
    # Faust's fetch loop hands a message over without tasks when its handler does not suspend
    # (streams/faust_compat.py); false: Faust's own four tasks per message
    faust_fast_dispatch: bool = True
    # the worker's Kafka consumer (streams/faust_compat.py, tune_fetcher): the longest a fetch
    # waits on the broker for records (Faust: 1.5 s), and how long records one agent has not
    # taken yet hold back fetches for the others (aiokafka: 0.1 s). Both hops (ingest, users)
    # share the consumer, so either wait could stall one behind the other
    fetch_wait_s: float = Field(0.05, gt=0)
    fetch_backoff_s: float = Field(0.005, ge=0)

    # -- web ------------------------------------------------------------------------------------
    web_enabled: bool = False
    # the web server's bind address (0.0.0.0: every interface; then set web_token)
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # bearer token(s) for the web API's write endpoints (POST /items), comma-separated so keys
    # can be rotated; empty: writes are refused (403) unless web_open_writes opts in
    web_token: SecretStr = SecretStr("")
    web_open_writes: bool = False  # writes without a token (a local demo only)
    # reads (pages, JSON API, /metrics) need the token too; /health stays open for probes
    web_auth_reads: bool = False
    # Faust's own pages (/router, /table, /graph, /performance, stats at /faust), token only
    web_debug_pages: bool = False

    # -- vector_store ---------------------------------------------------------------------------
    # edge: Qdrant Edge under data_dir/qdrant; qdrant: a server at qdrant_url; qdrant-local:
    # qdrant-client's on-disk mode; qdrant-memory: in-process, gone at exit
    store: Literal["edge", "qdrant", "qdrant-local", "qdrant-memory"] = "edge"
    qdrant_url: str = "http://127.0.0.1:6333"
    qdrant_api_key: SecretStr | None = None  # sent as the api-key header to a Qdrant server
    collection: str = "items"

    # -- encoder --------------------------------------------------------------------------------
    model_dir: Path = REPO_ROOT / ".cache" / "models"
    # another image encoder than the EfficientNet-Lite0 export: an .onnx file or a training
    # output folder (its current.json names the file), e.g. a `vrec train distill` student
    encoder_model: str = ""
    encoder_batch: int = Field(32, ge=1, description="products encoded per batch at most")
    encoder_batch_wait_s: float = Field(0.2, description="wait at most this long to fill one")
    encoder_threads: int = 0  # 0: onnxruntime picks
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # an image file, upload or fetched image over this many bytes is refused
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # decoded size over it: refused
    # pixels decoded at once by the encoder's decode pool (full-size decodes before the early
    # downscale); an image over it is decoded alone
    max_batch_pixels: int = Field(100_000_000, ge=1)
    # images with a long side over twice this are decoded reduced (JPEG draft, reduce) to at
    # least this long side before preprocessing
    decode_max_side: int = Field(512, ge=64)
    # `vrec train classify` heads (folders or .onnx files, comma-separated): uploads without
    # a head's label (category, or an attribute such as colour) get the predicted one and its
    # confidence in their payload; "" = off
    classifier: str = ""
    # sqlite file of embeddings keyed by (model id, image sha256); "" = no cache
    embedding_cache: str = ""
    # image + text fusion: weight w of the text vector (all-MiniLM-L6-v2 of title + category +
    # description) in similar-items, score (1 - w) cos_image + w cos_text; > 0 also embeds each
    # upload's text (encode role) and stores it as a second named vector "text" (needs a store
    # created with it: a new data_dir / collection); 0 = image only (off)
    text_weight: float = Field(0.0, ge=0, le=1)

    # -- images ---------------------------------------------------------------------------------
    # a product's image_path must resolve (symlinks followed) inside this folder; relative
    # paths resolve here. None: data_dir / "images". HTTP uploads (data_dir / "uploads") are
    # always allowed. See image_roots.
    image_root: Path | None = None
    # products with image_url (streams/imagefetch.py): only public addresses are fetched; this
    # comma-separated allowlist (host, host:port, CIDR) opens chosen hosts even if private
    image_fetch_allow_hosts: str = ""
    image_fetch_timeout_s: float = Field(10.0, gt=0)  # connect, and between reads
    image_fetch_total_s: float = Field(30.0, gt=0)  # one attempt, redirects included
    image_fetch_max_redirects: int = Field(5, ge=0)
    image_fetch_concurrency: int = Field(8, ge=1)  # fetches at once per worker
    image_fetch_retries: int = Field(2, ge=0)  # for 5xx, timeouts, connection errors

    # -- users: folding interactions into user state ---------------------------------------------
    half_life_days: float = Field(30.0, gt=0)
    weight_view: float = Field(0.3, ge=0)
    weight_purchase: float = Field(1.0, ge=0)
    history_len: int = Field(50, ge=1, description="recent events kept per user (dedupe, page)")
    # distinct items kept per user (vector, repurchase, exclusion); past it the item touched
    # longest ago is forgotten, its weight with it
    max_seen: int = Field(1000, ge=1)
    # micro-batches of the ingest and users agents: at most batch_max records, waiting at most
    # batch_within_s; one recommendation per user per batch (their latest event's).
    # batch_max=1: one per event. Faust's take_events waits the whole batch_within_s after each
    # batch unless batch_max records came, so each of the two hops adds up to that wait; under
    # load batches grow while the previous one is processed, so a short wait costs little
    # throughput (0.005 s: p50 at 1,000 events/s offered 32 ms against 57-61 ms with 0.02 s)
    batch_max: int = Field(1000, ge=1)
    batch_within_s: float = Field(0.005, gt=0)
    # a worker behind (at least batch_backlog records of the partition still on the broker when
    # the wait ends) goes on filling the batch, up to batch_max records or batch_backlog_within_s
    # in all: those records have waited longer than any batch wait already, and a bigger batch
    # ranks fewer lists per event (streams/agents/batching.py). 0: Faust's take_events as is
    batch_backlog: int = Field(200, ge=0)
    batch_backlog_within_s: float = Field(0.1, gt=0)

    # -- popularity: trending and co-purchase counts ---------------------------------------------
    trending_window_days: float = Field(7.0, gt=0)
    trending_bucket_s: int = Field(86_400, ge=1)
    # popularity counts a customer's repeat purchase of an item inside the window once
    trending_distinct_buyers: bool = True
    # integer weight of a purchase per sales channel in popularity (H&M store purchases: {1: 2})
    trending_channel_weights: dict[int, int] = Field(default_factory=lambda: {1: 2})
    trending_publish_s: float = Field(2.0, gt=0, description="publish the list for cold users")
    # co-purchase rows keep the top this many neighbours per item (count desc, then id)
    copurchase_neighbours: int = Field(200, ge=1)

    # -- ranking (what an experiment's variants may override) -------------------------------------
    # "visual" (similarity to the user vector) or "hybrid" (see streams/ranking/hybrid.py)
    ranker: Literal["visual", "hybrid"] = "hybrid"
    top_k: int = Field(12, ge=1)
    exclude: ExcludePolicy = "none"  # H&M customers buy again: repurchase is a signal
    # fewer events than this: the trending list instead of a personal one
    personalise_after: int = Field(1, ge=1, description="events before a user gets a personal list")
    w_repurchase: float = 1.0
    w_sibling: float = 0.45
    w_copurchase: float = 0.15
    w_visual: float = 0.5
    w_popularity: float = 0.3
    # a purchase counts in repurchase/sibling scores as (catalogue price / the user's dearest
    # item's price) ** this (0: price ignored; items without a price weigh as the dearest)
    rep_price_exponent: float = Field(1.0, ge=0)
    # sibling score x (1 + this * log1p(popularity) / log1p(max popularity))
    sibling_pop_boost: float = Field(1.0, ge=0)
    cf_seeds: int = Field(50, ge=1, description="most recent purchases used as CF seeds")
    cf_per_seed: int = Field(50, ge=1)
    cf_candidates: int = Field(200, ge=0)
    pop_candidates: int = Field(100, ge=0)

    # -- day_close ------------------------------------------------------------------------------
    # a clock mark (events.Tick) re-ranks the users active in the days it closes
    day_close_refresh: bool = True
    day_close_slice: int = Field(500, ge=1, description="users re-ranked between two yields")

    # -- event_time (streams/eventtime.py) -------------------------------------------------------
    # applied by the ingest agent to interactions and clock marks: ts at most max_future_s past
    # the Kafka record's timestamp, at most max_jump_s (plus the record timestamps' advance) past
    # the source partition's newest ts, at most max_late_s behind it (None: no limit); a record
    # outside goes to dead-letters or is clamped. max_jump_s is off by default: a replay of a
    # sparse log moves months between two records
    event_time_max_future_s: float = Field(3600.0, ge=0)
    event_time_max_jump_s: float | None = Field(None, ge=0)
    event_time_max_late_s: float | None = Field(30 * 86_400.0, ge=0)
    event_time_policy: Literal["dead_letter", "clamp"] = "dead_letter"

    # -- experiment -----------------------------------------------------------------------------
    # A/B/n experiment (streams/experiment.py): JSON or a JSON file's path; None: no variants.
    # variants_shadow ranks every user with every variant (evaluation: paired comparisons)
    variants: str | None = None
    variants_shadow: bool = False

    @field_validator("image_fetch_allow_hosts")
    @classmethod
    def _check_allow_hosts(cls, value: str) -> str:
        from streams.imagefetch import parse_allow

        parse_allow(value)  # a malformed entry fails at start, not at the first fetch
        return value

    @field_validator("gc_threshold")
    @classmethod
    def _check_gc_threshold(cls, value: str) -> str:
        from streams.util import parse_gc_threshold

        parse_gc_threshold(value)  # a malformed value fails at start
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _check_roles(cls, value: Any) -> frozenset[str]:
        items = value.split(",") if isinstance(value, str) else value
        try:
            parts = frozenset(str(p).strip() for p in items) - {""}
        except TypeError:
            parts = frozenset()
        unknown = sorted(parts - set(ROLES))
        if not parts or unknown:
            raise ValueError(
                f"roles must be a non-empty subset of {ROLES} (comma-separated in VREC_ROLES), "
                f"got {value!r}" + (f": unknown {unknown}" if unknown else "")
            )
        return parts

    @field_serializer("roles", when_used="json")
    def _roles_text(self, roles: frozenset[str]) -> str:
        """The VREC_ROLES form: comma-separated, in ROLES order."""
        return ",".join(r for r in ROLES if r in roles)

    # -- sections -------------------------------------------------------------------------------
    def _section(self, name: str, **derived: Any) -> Any:
        cls = SECTIONS[name]
        values = {attr: getattr(self, flat) for attr, flat in section_fields(name).items()}
        return cls(**values, **derived)

    @property
    def streaming(self) -> StreamingSettings:
        return self._section("streaming")

    @property
    def tables(self) -> TableSettings:
        return self._section("tables")

    @property
    def worker(self) -> WorkerSettings:
        return self._section("worker")

    @property
    def web(self) -> WebSettings:
        return self._section("web")

    @property
    def vector_store(self) -> VectorStoreSettings:
        return self._section("vector_store")

    @property
    def encoder(self) -> EncoderSettings:
        return self._section("encoder")

    @property
    def images(self) -> ImageSettings:
        return self._section("images", roots=self.image_roots)

    @property
    def users(self) -> UserSettings:
        return self._section("users")

    @property
    def popularity(self) -> PopularitySettings:
        return self._section("popularity")

    @property
    def ranking(self) -> RankingSettings:
        return self._section("ranking")

    @property
    def day_close(self) -> DayCloseSettings:
        return self._section("day_close")

    @property
    def event_time(self) -> EventTimeConfig:
        return self._section("event_time")

    @property
    def experiment(self) -> ExperimentSettings:
        return self._section("experiment")

    # -- derived values -------------------------------------------------------------------------
    @property
    def image_roots(self) -> tuple[Path, Path]:
        """Folders a product's image file may lie in: the image root, then HTTP uploads."""
        root = self.image_root if self.image_root is not None else self.data_dir / "images"
        return root, self.data_dir / "uploads"

    @property
    def web_tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens (``web_token`` split at commas)."""
        return self.web.tokens

    @property
    def broker_url(self) -> str:
        return self.streaming.broker_url

    @property
    def bootstrap(self) -> str:
        return self.streaming.bootstrap


def isolated_run(base: Settings, kind: str, **update) -> Settings:
    """``base`` with its own app id, topic prefix and data folder for one run (demo, bench,
    eval), so runs never share topics or tables."""
    import time
    import uuid

    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    return base.model_copy(
        update={
            "app_id": f"vrec-{kind}-{run}",
            "data_dir": base.data_dir / kind / run,
            "topics": TopicNames(prefix=f"{kind}-{run}."),
            **update,
        }
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
