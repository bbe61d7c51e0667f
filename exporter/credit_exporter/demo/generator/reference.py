"""Reference data: models, service types, pricing rules, categories, channels, plans,
the organizations' profiles and the traffic shape."""

from __future__ import annotations

from dataclasses import dataclass

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000

# Average billable usage events per day at scale 1.0, all organizations together.
EVENTS_PER_DAY = 3_000
# Usage events per COPY batch; the producer thread runs at most a few batches ahead.
BATCH_EVENTS = 40_000


@dataclass(frozen=True)
class ModelSpec:
    id: int
    slug: str  # gen_ai.request.model
    provider: str  # gen_ai.provider.name
    name: str
    multiplier_milli: int  # credit multiplier x 1000
    latency_s: float  # mean response time off-peak-to-peak average (seed 003)
    success: float
    rating: float  # mean answer rating (1-5)

    @property
    def multiplier(self) -> str:
        return f"{self.multiplier_milli // 1000}.{self.multiplier_milli % 1000:03d}"

    @property
    def tier(self) -> str:
        if self.multiplier_milli >= 2000:
            return "premium"
        return "standard" if self.multiplier_milli >= 1000 else "economy"


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(1, "gpt-4o", "openai", "GPT-4o", 2000, 3.1, 0.972, 4.7),
    ModelSpec(2, "gpt-4-turbo", "openai", "GPT-4 Turbo", 1000, 2.4, 0.968, 4.5),
    ModelSpec(3, "gpt-3.5-turbo", "openai", "GPT-3.5 Turbo", 300, 1.2, 0.955, 4.25),
    ModelSpec(4, "claude-3-7-sonnet", "anthropic", "Claude 3.7 Sonnet", 2500, 1.8, 0.985, 4.8),
    ModelSpec(5, "claude-3-5-sonnet", "anthropic", "Claude 3.5 Sonnet", 1000, 1.6, 0.976, 4.6),
    ModelSpec(6, "claude-3-haiku", "anthropic", "Claude 3 Haiku", 500, 0.8, 0.942, 4.2),
    ModelSpec(7, "llama-3.3-70b", "meta", "Llama 3.3 70B", 1000, 3.2, 0.951, 4.3),
    ModelSpec(8, "deepseek-v3", "deepseek", "DeepSeek V3", 1000, 2.9, 0.957, 4.35),
    ModelSpec(9, "o3-mini", "openai", "o3 mini", 3000, 4.1, 0.965, 4.6),
    ModelSpec(10, "gpt-4o-mini", "openai", "GPT-4o mini", 200, 0.9, 0.962, 4.3),
    ModelSpec(11, "text-embedding-3-small", "openai", "Text Embedding 3 Small", 100, 0.15,
              0.985, 4.5),
    ModelSpec(12, "whisper-1", "openai", "Whisper", 1000, 0.9, 0.975, 4.5),
    ModelSpec(13, "tts-1", "openai", "TTS 1", 1000, 0.7, 0.98, 4.5),
)  # fmt: skip
MODEL = {m.slug: m for m in MODELS}
EMBEDDING_MODEL = MODEL["text-embedding-3-small"]
STT_MODEL = MODEL["whisper-1"]
TTS_MODEL = MODEL["tts-1"]
DOC_MODEL = MODEL["gpt-4o-mini"]
# Chat models with their share of prompts (seed 003's "Model Usage", last 30 days),
# plus the economy models agents are often deployed with.
CHAT_MODEL_WEIGHTS: dict[str, float] = {
    "gpt-4o": 2450, "gpt-4-turbo": 1200, "gpt-3.5-turbo": 800, "claude-3-7-sonnet": 1100,
    "claude-3-5-sonnet": 600, "claude-3-haiku": 900, "llama-3.3-70b": 400, "deepseek-v3": 150,
    "o3-mini": 250, "gpt-4o-mini": 1100,
}  # fmt: skip

SERVICE_TYPES: tuple[tuple[int, str, str], ...] = (
    (1, "text_generation", "Text Generation"),
    (2, "speech_to_text", "Speech-to-Text"),
    (3, "text_to_speech", "Text-to-Speech"),
    (4, "embedding", "Embedding"),
    (5, "agent", "Agent"),
    (6, "tool_run", "Tool Run"),
    (7, "document_processing", "Document Processing"),
)
SVC = {slug: sid for sid, slug, _ in SERVICE_TYPES}


@dataclass(frozen=True)
class RuleSpec:
    id: int
    service: str
    slug: str
    name: str
    unit: str
    nano_per_unit: int  # credits_per_unit x 1e9 (the column is numeric(18, 9))

    @property
    def credits_per_unit(self) -> str:
        return f"{self.nano_per_unit // 10**9}.{self.nano_per_unit % 10**9:09d}"


# credits = units x credits_per_unit x model multiplier, rounded to 6 decimals.
PRICING_RULES: tuple[RuleSpec, ...] = (
    RuleSpec(1, "text_generation", "input_tokens", "Input tokens", "token", 400_000),
    RuleSpec(2, "text_generation", "output_tokens", "Output tokens", "token", 1_200_000),
    RuleSpec(3, "speech_to_text", "transcription_seconds", "Transcription", "second", 10_000_000),
    RuleSpec(4, "speech_to_text", "realtime_transcription_seconds", "Realtime transcription",
             "second", 15_000_000),
    RuleSpec(5, "text_to_speech", "synthesis_seconds", "Speech synthesis", "second", 15_000_000),
    RuleSpec(6, "text_to_speech", "hd_synthesis_seconds", "HD speech synthesis", "second",
             30_000_000),
    RuleSpec(7, "embedding", "embedding_tokens", "Embedding tokens", "token", 20_000),
    RuleSpec(8, "agent", "agent_message", "Agent message", "message", 1_000_000_000),
    RuleSpec(9, "agent", "agent_step", "Agent reasoning step", "step", 250_000_000),
    RuleSpec(10, "tool_run", "tool_run", "Tool run", "run", 50_000_000),
    RuleSpec(11, "tool_run", "web_search", "Web search", "run", 100_000_000),
    RuleSpec(12, "document_processing", "document_page", "Document ingestion", "document",
             500_000_000),
    RuleSpec(13, "document_processing", "document_ocr", "Document OCR", "document",
             1_500_000_000),
)  # fmt: skip
RULE = {r.slug: r for r in PRICING_RULES}


@dataclass(frozen=True)
class TaskSpec:
    id: int
    slug: str
    name: str
    weight: float  # share of workspace prompts (seed 003's shares are of credits)
    models: tuple[tuple[str, float], ...]


TASKS: tuple[TaskSpec, ...] = (
    # weight: share of direct prompts, chosen so that with the agents' traffic the
    # credits split roughly as seed 003 says: 28/22/18/15/12/5%.
    TaskSpec(1, "email_writing", "Email Writing & Communication", 0.21,
             (("claude-3-haiku", 25), ("gpt-3.5-turbo", 15), ("gpt-4o-mini", 15),
              ("claude-3-5-sonnet", 15), ("gpt-4-turbo", 18), ("gpt-4o", 12))),
    TaskSpec(2, "content_creation", "Content Creation & Editing", 0.31,
             (("gpt-4o", 30), ("claude-3-7-sonnet", 22), ("claude-3-5-sonnet", 23),
              ("gpt-4-turbo", 15), ("llama-3.3-70b", 10))),
    TaskSpec(3, "data_analysis", "Data Analysis & Summarization", 0.07,
             (("gpt-4-turbo", 30), ("llama-3.3-70b", 25), ("gpt-4o", 15), ("deepseek-v3", 15),
              ("claude-3-5-sonnet", 15))),
    TaskSpec(4, "code_development", "Code Development & Review", 0.34,
             (("llama-3.3-70b", 25), ("gpt-4o", 25), ("claude-3-7-sonnet", 20),
              ("deepseek-v3", 20), ("o3-mini", 10))),
    TaskSpec(5, "research", "Complex Research Tasks", 0.05,
             (("claude-3-7-sonnet", 40), ("gpt-4o", 30), ("o3-mini", 30))),
    TaskSpec(6, "other", "Other Tasks", 0.02,
             tuple((slug, 1.0) for slug in CHAT_MODEL_WEIGHTS)),
)  # fmt: skip
TASK = {t.slug: t for t in TASKS}

CHANNELS: tuple[tuple[int, str, str], ...] = (
    (1, "web_chat", "Web chat"),
    (2, "whatsapp", "WhatsApp"),
    (3, "phone", "Phone"),
    (4, "sms", "SMS"),
    (5, "messenger", "Messenger"),
    (6, "instagram", "Instagram"),
    (7, "telegram", "Telegram"),
    (8, "api", "API"),
)
CHANNEL = {slug: cid for cid, slug, _ in CHANNELS}
QUOTAS = ("text_queries", "voice_seconds", "concurrent_calls", "phone_numbers", "human_agent_seats")


@dataclass(frozen=True)
class PlanSpec:
    id: int
    slug: str
    name: str
    monthly_credits: int  # list grant at scale 1 (an organization's grant is its own)
    agent_slots: int
    seats: int
    quotas: tuple[int, int, int, int, int]  # in QUOTAS order; the first two scale with volume


PLANS: tuple[PlanSpec, ...] = (
    PlanSpec(1, "free", "Free", 1_000, 2, 3, (3_000, 0, 0, 0, 0)),
    PlanSpec(2, "pro", "Pro", 25_000, 5, 10, (6_000, 40_000, 2, 2, 2)),
    PlanSpec(3, "team", "Team", 80_000, 15, 40, (8_000, 150_000, 5, 5, 5)),
    PlanSpec(4, "enterprise", "Enterprise", 300_000, 50, 150, (20_000, 600_000, 20, 20, 20)),
)
PLAN = {p.slug: p for p in PLANS}


@dataclass(frozen=True)
class AgentTemplate:
    slug: str
    name: str
    channels: tuple[tuple[str, float], ...]
    tasks: tuple[tuple[str, float], ...]  # what its conversations are for, by weight
    traffic: float  # relative conversation volume within its organization
    campaign: bool = False  # outbound: conversations are campaigns, not chats


AGENT_TEMPLATES: dict[str, AgentTemplate] = {
    t.slug: t
    for t in (
        AgentTemplate("support-assistant", "Support Assistant",
                      (("web_chat", 60), ("whatsapp", 25), ("messenger", 15)),
                      (("email_writing", 55), ("data_analysis", 35), ("other", 10)), 3.0),
        AgentTemplate("voice-receptionist", "Voice Receptionist", (("phone", 1),),
                      (("email_writing", 80), ("other", 20)), 0.7),
        AgentTemplate("sales-outreach", "Sales Outreach", (("sms", 50), ("whatsapp", 50)),
                      (("email_writing", 70), ("content_creation", 30)), 1.0, campaign=True),
        AgentTemplate("social-concierge", "Social Concierge",
                      (("instagram", 45), ("messenger", 30), ("telegram", 25)),
                      (("content_creation", 80), ("email_writing", 20)), 1.2),
        AgentTemplate("docs-helper", "Docs Helper", (("web_chat", 70), ("api", 30)),
                      (("research", 75), ("data_analysis", 25)), 1.5),
        AgentTemplate("lead-qualifier", "Lead Qualifier",
                      (("web_chat", 50), ("telegram", 20), ("sms", 30)),
                      (("email_writing", 60), ("data_analysis", 40)), 1.2),
        AgentTemplate("billing-bot", "Billing Bot",
                      (("web_chat", 50), ("whatsapp", 30), ("sms", 20)),
                      (("data_analysis", 1),), 1.0),
        AgentTemplate("hr-helpdesk", "HR Helpdesk", (("web_chat", 80), ("telegram", 20)),
                      (("other", 60), ("email_writing", 40)), 0.6),
        AgentTemplate("onboarding-guide", "Onboarding Guide",
                      (("web_chat", 60), ("whatsapp", 20), ("instagram", 20)),
                      (("content_creation", 90), ("other", 10)), 0.8),
        AgentTemplate("order-tracker", "Order Tracker",
                      (("whatsapp", 40), ("sms", 30), ("messenger", 30)),
                      (("email_writing", 60), ("data_analysis", 30), ("other", 10)), 1.1),
        AgentTemplate("appointment-setter", "Appointment Setter", (("phone", 70), ("sms", 30)),
                      (("email_writing", 85), ("other", 15)), 0.6),
        AgentTemplate("code-reviewer", "Code Reviewer", (("api", 80), ("web_chat", 20)),
                      (("code_development", 1),), 0.7),
    )
}  # fmt: skip


@dataclass(frozen=True)
class PaidAccess:
    template: str
    price_cents: int
    currency: str


@dataclass(frozen=True)
class OrgProfile:
    """One demo organization and the situation it is in at ``now``."""

    slug: str
    name: str
    plan: str
    traffic_share: float  # of all usage events
    workspace_share: float  # of the org's events: direct prompts (no agent, channel api)
    ratio_milli: int  # current-period usage / organization budget limit, x 1000
    topup_milli: int  # topup allocation as a share of the limit (orgs without a crossing)
    crossing_milli: int | None  # plan pool exhausted after this share of the period's usage
    auto_recharge: bool
    currency: str
    period_age_days: float  # how far into its current billing period ``now`` is
    departments: int
    projects: int
    users: int
    deactivated: int
    human_agents: int
    agents: tuple[str, ...]  # templates; the last ``deleted_agents`` are deleted
    deleted_agents: int
    phone_numbers: int
    released_numbers: int
    calls_in_progress: int
    paid: tuple[PaidAccess, ...] = ()


ORGS: tuple[OrgProfile, ...] = (
    OrgProfile("northwind", "Northwind Traders", "pro", 0.15, 0.40, 450, 0, None, True, "USD",
               12.4, 4, 4, 8, 1, 1,
               ("support-assistant", "social-concierge", "docs-helper", "order-tracker",
                "onboarding-guide"), 1, 2, 1, 0,
               (PaidAccess("docs-helper", 1499, "USD"),)),
    OrgProfile("acme", "Acme Corp", "team", 0.14, 0.35, 780, 100, None, False, "USD",
               20.6, 5, 6, 18, 2, 3,
               ("support-assistant", "voice-receptionist", "sales-outreach", "docs-helper",
                "billing-bot", "hr-helpdesk", "onboarding-guide", "code-reviewer",
                "order-tracker"), 1, 4, 1, 1,
               (PaidAccess("docs-helper", 999, "USD"),)),
    OrgProfile("globex", "Globex Corporation", "team", 0.13, 0.30, 925, 0, 720, True, "EUR",
               24.3, 4, 5, 15, 1, 5,
               ("support-assistant", "voice-receptionist", "lead-qualifier", "social-concierge",
                "billing-bot", "appointment-setter", "docs-helper", "hr-helpdesk"), 1, 5, 0, 2,
               (PaidAccess("social-concierge", 499, "EUR"),)),
    OrgProfile("initech", "Initech", "pro", 0.12, 0.45, 1025, 0, 550, False, "USD",
               26.8, 3, 3, 10, 1, 2,
               ("support-assistant", "voice-receptionist", "docs-helper", "code-reviewer",
                "billing-bot", "sales-outreach"), 1, 2, 0, 1),
    OrgProfile("umbrella", "Umbrella Corporation", "enterprise", 0.40, 0.30, 600, 200, None,
               False, "EUR", 17.2, 6, 9, 60, 4, 8,
               ("support-assistant", "voice-receptionist", "sales-outreach", "social-concierge",
                "docs-helper", "lead-qualifier", "billing-bot", "order-tracker",
                "appointment-setter", "code-reviewer", "hr-helpdesk", "onboarding-guide"),
               2, 12, 3, 3,
               (PaidAccess("docs-helper", 1900, "EUR"), PaidAccess("code-reviewer", 2900, "USD"))),
    OrgProfile("hooli", "Hooli", "free", 0.06, 0.60, 300, 0, None, False, "USD",
               5.4, 3, 2, 3, 1, 0, ("support-assistant", "docs-helper", "social-concierge"), 1,
               0, 0, 0),
)  # fmt: skip
RUNAWAY = ("umbrella", "lead-qualifier")
RUNAWAY_HOURS = 6
RUNAWAY_FACTOR = 20.0  # runaway hourly events / the agent's usual hourly events
SPIKE_ORG = "umbrella"
SPIKE_FACTOR = 3.5
SPIKE_DAYS_AGO = 20

DEPARTMENTS = (("engineering", "Engineering"), ("sales", "Sales"), ("marketing", "Marketing"),
               ("support", "Customer Support"), ("finance", "Finance"),
               ("operations", "Operations"))  # fmt: skip
PROJECTS = (("customer-support", "Customer Support"), ("website-chat", "Website Chat"),
            ("sales-pipeline", "Sales Pipeline"), ("internal-tools", "Internal Tools"),
            ("knowledge-base", "Knowledge Base"), ("mobile-app", "Mobile App"),
            ("marketing-campaigns", "Marketing Campaigns"), ("data-platform", "Data Platform"),
            ("research-lab", "Research Lab"))  # fmt: skip
COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
          "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31",
          "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363", "#e6550d",
          "#969696", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#fdae6b", "#a1d99b",
          "#c6dbef", "#dadaeb")  # fmt: skip
FIRST_NAMES = (
    "sarah", "mike", "anna", "tom", "lisa", "david", "emma", "james", "olivia", "noah", "sophia",
    "liam", "mia", "lucas", "ava", "ethan", "isabella", "mason", "amelia", "logan", "harper",
    "elijah", "evelyn", "oliver", "abigail", "jacob", "emily", "henry", "ella", "jack", "grace",
    "leo", "chloe", "owen", "zoe", "ryan", "nora", "luke", "lily", "adam", "hannah", "ben",
    "ruby", "sam", "alice", "max", "julia", "dan", "kate", "nick", "eva", "paul", "laura",
    "mark", "claire", "peter", "rose", "alex", "nina", "chris", "maria", "tim", "sofia", "john",
)  # fmt: skip

# Traffic shape (seed 003): Tue-Thu highest, Friday afternoon and Monday morning
# lower, weekends ~20% of a weekday; peaks 10-12 and 14-16 (UTC stands in for
# local time).
WEEKDAY_FACTOR = (0.95, 1.15, 1.2, 1.15, 0.95, 0.21, 0.19)  # Monday first
HOUR_FACTOR = (0.12, 0.08, 0.06, 0.06, 0.08, 0.15, 0.3, 0.55, 0.9, 1.35, 1.9, 1.95, 1.4, 1.45,
               1.9, 1.95, 1.35, 0.95, 0.65, 0.5, 0.4, 0.3, 0.22, 0.16)  # fmt: skip
PEAK_HOURS = range(9, 17)
# Response time relative to a model's mean (seed 003: peak 2.8 s, off-peak 1.9 s,
# weekend 1.5 s around an average of 2.3 s).
# Chosen so that the traffic-weighted mean is the model's mean.
LATENCY_CLASS_FACTOR = (0.76, 1.12, 0.6)  # off-peak, peak, weekend
OFF_PEAK, PEAK, WEEKEND = 0, 1, 2

PROMPT_PLAYGROUND = 0.04  # share of direct prompts run in the playground
CONVERSATION_PLAYGROUND = 0.025  # share of agent conversations that are playground tests
DOC_SHARE = 0.02  # share of an org's events that are knowledge-base document ingestion
RETURNING_VISITOR = 0.3
SUBSCRIBE = 0.12  # chance a new visitor of a paid agent subscribes
UNANSWERED = 0.03
FEEDBACK = 0.15  # chance a (non-call) conversation gets a rating
REFUND_EVERY = (3_000, 11_000)  # events between two refunds or corrections
BUDGET_TARGETS = (770, 920, 1020, 600, 450, 300, 850)  # used / limit x 1000
# Alert ladders (budget_alert_levels, percent of the limit per level; None: no
# row, the monitoring's default applies). A cautious customer alerted from 50 %,
# and one that only wants its first warning earlier (a partial ladder).
ORG_ALERT_LADDERS: dict[str, tuple[int | None, int | None, int | None]] = {
    "umbrella": (50, 80, 100),
    "northwind": (40, None, None),
}
# One budget with a ladder of its own, over its organization's: the scoped budget
# of this organization with the highest usage ratio below this one (x 1000).
BUDGET_ALERT_LADDER = ("umbrella", 900, (60, 90, 100))
ALERT_LEVELS = ("usage_high", "almost_exhausted", "exhausted")  # lowest first
