"""One typed settings object for the whole app, read from ``VREC_*`` environment variables.

Defaults are the embedded mode: a local Kafka broker on 127.0.0.1, Qdrant Edge on disk under
``data_dir``, RocksDB-backed Faust tables, one partition per topic.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

ExcludePolicy = Literal["none", "purchased", "seen"]
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


class Settings(BaseSettings):
    """Everything a worker, the replay tools and the CLI need."""

    model_config = SettingsConfigDict(env_prefix="VREC_", extra="ignore")

    # Kafka / Faust
    broker: str = "127.0.0.1:9092"
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity)
    app_id: str = "vrec"
    partitions: int = Field(1, ge=1, description="partitions of the topics vrec creates")
    # memory:// rebuilds tables from their changelog topics at start (what the crash tests
    # verify); rocksdb:// restarts faster but lost updates after SIGKILL in our runs
    table_store: str = "memory://"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    session_timeout_s: float = Field(20.0, gt=0, description="consumer group session timeout")
    # the producer waits this long to fill a batch: fewer, larger produce requests (Faust's
    # default 0 sent one request per record under load: 12% of the worker in socket writes)
    producer_linger_s: float = Field(0.005, ge=0)
    producer_batch_bytes: int = Field(256 * 1024, ge=1024)
    web_port: int = 6066
    # the web server's bind address (0.0.0.0: every interface; then set web_token)
    web_host: str = "127.0.0.1"
    # bearer token(s) for the web API's write endpoints (POST /items), comma-separated so keys
    # can be rotated; empty: writes are refused (403) unless web_open_writes opts in
    web_token: SecretStr = SecretStr("")
    web_open_writes: bool = False  # writes without a token (a local demo only)
    # reads (pages, JSON API, /metrics) need the token too; /health stays open for probes
    web_auth_reads: bool = False
    # Faust's own pages (/router, /table, /graph, /performance, stats at /faust), token only
    web_debug_pages: bool = False
    # "json": one JSON object per log line (streams/logs.py); "text": human-readable
    log_format: Literal["text", "json"] = "text"
    web_enabled: bool = False
    data_dir: Path = REPO_ROOT / "var"

    # what this worker runs, comma-separated: "encode" (products -> vector store and
    # item-embeddings) and/or "recommend" (views/purchases -> user table -> recommendations,
    # with the item replica). Split them to run the encoder as its own (GPU) service.
    roles: str = "encode,recommend"
    # every worker materialises the whole item index from item-embeddings (scale-out)
    replicate_items: bool = True

    # vector store
    store: Literal["edge", "qdrant", "qdrant-local", "qdrant-memory"] = "edge"
    qdrant_url: str = "http://127.0.0.1:6333"
    qdrant_api_key: SecretStr | None = None  # sent as the api-key header to a Qdrant server
    collection: str = "items"

    # encoder
    model_dir: Path = REPO_ROOT / ".cache" / "models"
    # another image encoder than the EfficientNet-Lite0 export: an .onnx file or a training
    # output folder (its current.json names the file), e.g. a `vrec train distill` student
    encoder_model: str = ""
    encoder_batch: int = Field(32, ge=1)
    encoder_batch_wait_s: float = 0.2
    encoder_threads: int = 0  # 0: onnxruntime picks
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # products with image_url (streams/imagefetch.py): only public addresses are fetched; this
    # comma-separated allowlist (host, host:port, CIDR) opens chosen hosts even if private
    image_fetch_allow_hosts: str = ""
    image_fetch_timeout_s: float = Field(10.0, gt=0)  # connect, and between reads
    image_fetch_total_s: float = Field(30.0, gt=0)  # one attempt, redirects included
    image_fetch_max_redirects: int = Field(5, ge=0)
    image_fetch_concurrency: int = Field(8, ge=1)  # fetches at once per worker
    image_fetch_retries: int = Field(2, ge=0)  # for 5xx, timeouts, connection errors
    # a product's image_path must resolve (symlinks followed) inside this folder; relative
    # paths resolve here. None: data_dir / "images". HTTP uploads (data_dir / "uploads") are
    # always allowed. See image_roots.
    image_root: Path | None = None
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
    # upload's text and stores it as a second named vector "text" (needs a store created with
    # it: a new data_dir / collection); 0 = image only (off)
    text_weight: float = Field(0.0, ge=0, le=1)

    # user vectors and ranking
    half_life_days: float = Field(30.0, gt=0)
    weight_view: float = Field(0.3, ge=0)
    weight_purchase: float = Field(1.0, ge=0)
    history_len: int = Field(50, ge=1, description="recent events kept per user (dedupe, page)")
    # distinct items kept per user (vector, repurchase, exclusion); past it the item touched
    # longest ago is forgotten, its weight with it
    max_seen: int = Field(1000, ge=1)
    exclude: ExcludePolicy = "none"  # H&M customers buy again: repurchase is a signal
    top_k: int = Field(12, ge=1)
    personalise_after: int = Field(1, ge=1, description="events before a user gets visual recs")
    trending_window_days: float = Field(7.0, gt=0)
    trending_bucket_s: int = Field(86_400, ge=1)
    # popularity counts a customer's repeat purchase of an item inside the window once
    trending_distinct_buyers: bool = True
    # integer weight of a purchase per sales channel in popularity (H&M store purchases: {1: 2})
    trending_channel_weights: dict[int, int] = Field(default_factory=lambda: {1: 2})
    trending_publish_s: float = Field(2.0, gt=0, description="publish the list for cold users")
    # a clock mark (events.Tick) re-ranks the users active in the days it closes
    day_close_refresh: bool = True
    day_close_slice: int = Field(500, ge=1, description="users re-ranked between two yields")
    # event-time policy (streams/eventtime.py), applied by the ingest agent to interactions and
    # clock marks: ts at most max_future_s past the Kafka record's timestamp, at most max_jump_s
    # (plus the record timestamps' advance) past the source partition's newest ts, at most
    # max_late_s behind it (None: no limit); a record outside goes to dead-letters or is clamped.
    # max_jump_s is off by default: a replay of a sparse log moves months between two records
    event_time_max_future_s: float = Field(3600.0, ge=0)
    event_time_max_jump_s: float | None = Field(None, ge=0)
    event_time_max_late_s: float | None = Field(30 * 86_400.0, ge=0)
    event_time_policy: Literal["dead_letter", "clamp"] = "dead_letter"

    # A/B/n experiment (streams/experiment.py): JSON or a JSON file's path; None: no variants.
    # variants_shadow ranks every user with every variant (evaluation: paired comparisons)
    variants: str | None = None
    variants_shadow: bool = False

    # users agent micro-batches: at most batch_max user-events, waiting at most batch_within_s;
    # one recommendation per user per batch (their latest event's). batch_max=1: one per event
    batch_max: int = Field(1000, ge=1)
    batch_within_s: float = Field(0.02, gt=0)

    # ranker: "visual" (similarity to the user vector) or "hybrid" (see streams/ranking/hybrid.py)
    ranker: Literal["visual", "hybrid"] = "hybrid"
    w_repurchase: float = 1.0
    w_sibling: float = 0.45
    w_copurchase: float = 0.15
    w_visual: float = 0.5
    w_popularity: float = 0.3
    cf_seeds: int = Field(50, ge=1, description="most recent purchases used as CF seeds")
    cf_per_seed: int = Field(50, ge=1)
    cf_candidates: int = Field(200, ge=0)
    # co-purchase rows keep the top this many neighbours per item (count desc, then id)
    copurchase_neighbours: int = Field(200, ge=1)
    pop_candidates: int = Field(100, ge=0)
    # a purchase counts in repurchase/sibling scores as (catalogue price / the user's dearest
    # item's price) ** this (0: price ignored; items without a price weigh as the dearest)
    rep_price_exponent: float = Field(1.0, ge=0)
    # sibling score x (1 + this * log1p(popularity) / log1p(max popularity))
    sibling_pop_boost: float = Field(1.0, ge=0)

    topics: TopicNames = Field(default_factory=TopicNames)

    @field_validator("image_fetch_allow_hosts")
    @classmethod
    def _check_allow_hosts(cls, value: str) -> str:
        from streams.imagefetch import parse_allow

        parse_allow(value)  # a malformed entry fails at start, not at the first fetch
        return value

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, value: str) -> str:
        parts = sorted({p.strip() for p in value.split(",") if p.strip()})
        unknown = [p for p in parts if p not in ROLES]
        if not parts or unknown:
            raise ValueError(f"roles must be a comma-separated subset of {ROLES}, got {value!r}")
        return ",".join(parts)

    @property
    def image_roots(self) -> tuple[Path, Path]:
        """Folders a product's image file may lie in: the image root, then HTTP uploads."""
        root = self.image_root if self.image_root is not None else self.data_dir / "images"
        return root, self.data_dir / "uploads"

    @property
    def web_tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens (``web_token`` split at commas)."""
        raw = self.web_token.get_secret_value()
        return tuple(t.strip() for t in raw.split(",") if t.strip())

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(self.roles.split(","))

    @property
    def broker_url(self) -> str:
        return self.broker if "://" in self.broker else f"kafka://{self.broker}"

    @property
    def bootstrap(self) -> str:
        return self.broker.split("://", 1)[-1]


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
