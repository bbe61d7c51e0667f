"""The world: dimension rows and the sampling structures built on them."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from credit_exporter.demo.generator.reference import (
    AGENT_TEMPLATES,
    CHANNEL,
    COLORS,
    DEPARTMENTS,
    DOC_SHARE,
    FIRST_NAMES,
    MODEL,
    MS_PER_DAY,
    ORGS,
    PLAN,
    PROJECTS,
    RULE,
    RUNAWAY,
    TASK,
    AgentTemplate,
    ModelSpec,
    OrgProfile,
    PaidAccess,
    PlanSpec,
)
from credit_exporter.demo.generator.sampling import (
    AGENT_MODEL_PICK,
    EXCHANGES,
    LOOKUP_PER_EXCHANGE,
    STEP_PER_EXCHANGE,
    TOOL_PER_EXCHANGE,
    Weighted,
    _mean,
    credits_micro,
)


@dataclass
class User:
    id: int
    org_id: int
    department_id: int
    email: str
    human_agent: bool
    deactivated: bool
    weight: float
    projects: Weighted[int] | None = None


@dataclass
class Agent:
    id: int
    org_id: int
    project_id: int
    slug: str
    name: str
    template: AgentTemplate
    model: ModelSpec
    owner: User
    deleted: bool
    weight: float
    paid: PaidAccess | None
    channels: Weighted[int] = field(init=False)
    tasks: Weighted[int] = field(init=False)
    task_id: int = field(init=False)  # the main one
    message_credits: int = field(init=False)  # one agent_message with this agent's model

    def __post_init__(self) -> None:
        self.channels = Weighted(
            [CHANNEL[c] for c, _ in self.template.channels], [w for _, w in self.template.channels]
        )
        self.tasks = Weighted(
            [TASK[t].id for t, _ in self.template.tasks], [w for _, w in self.template.tasks]
        )
        self.task_id = TASK[self.template.tasks[0][0]].id
        self.message_credits = credits_micro(1, RULE["agent_message"], self.model)

    def conversation_type(self, channel_id: int) -> str:
        if channel_id == CHANNEL["phone"]:
            return "call"
        return "campaign" if self.template.campaign else "chat"

    def mean_events_per_conversation(self) -> float:
        """Expected usage events of one of this agent's conversations."""
        total = 0.0
        norm = sum(w for _, w in self.template.channels)
        for channel, weight in self.template.channels:
            kind = self.conversation_type(CHANNEL[channel])
            extra = TOOL_PER_EXCHANGE + LOOKUP_PER_EXCHANGE + STEP_PER_EXCHANGE
            per_exchange = 1 + extra + 2 * (kind == "call")
            total += weight / norm * _mean(EXCHANGES[kind]) * per_exchange
        return total


@dataclass
class Org:
    id: int
    profile: OrgProfile
    plan: PlanSpec
    created_ms: int
    churn_ms: int  # agents are deleted and users deactivated at this instant
    departments: list[tuple[int, str, str]]
    projects: list[tuple[int, str, str, str]]
    users: list[User]
    agents: list[Agent]
    phone_numbers: list[tuple[int, str, bool]]  # id, number, released
    users_before: Weighted[User] = field(init=False)
    users_after: Weighted[User] = field(init=False)
    agents_before: Weighted[Agent] = field(init=False)
    agents_after: Weighted[Agent] = field(init=False)
    conversations_per_event: float = field(init=False)

    def __post_init__(self) -> None:
        active = [u for u in self.users if not u.deactivated]
        self.users_before = Weighted(self.users, [u.weight for u in self.users])
        self.users_after = Weighted(active, [u.weight for u in active])
        live = [a for a in self.agents if not a.deleted]
        self.agents_before = Weighted(self.agents, [a.weight for a in self.agents])
        self.agents_after = Weighted(live, [a.weight for a in live])
        # Conversation starts per expected usage event of this organization.
        total = sum(a.weight for a in self.agents)
        per_conversation = sum(
            a.weight / total * a.mean_events_per_conversation() for a in self.agents
        )
        agent_share = 1.0 - self.profile.workspace_share - DOC_SHARE
        self.conversations_per_event = agent_share / per_conversation

    @property
    def slug(self) -> str:
        return self.profile.slug


@dataclass
class World:
    orgs: list[Org]

    def org(self, slug: str) -> Org:
        return next(o for o in self.orgs if o.slug == slug)

    def agent(self, org_slug: str, agent_slug: str) -> Agent:
        return next(a for a in self.org(org_slug).agents if a.slug == agent_slug)


def build_world(seed: int, range_start_ms: int, range_end_ms: int) -> World:
    """Organizations, users, agents, ... The structure depends on the seed only;
    the timestamps (creation, churn) on the range."""
    rng = random.Random(f"{seed}:world")
    orgs: list[Org] = []
    ids = defaultdict(int)

    def next_id(kind: str) -> int:
        ids[kind] += 1
        return ids[kind]

    span = range_end_ms - range_start_ms
    color_order = list(COLORS)
    rng.shuffle(color_order)
    colors = iter(color_order)
    for index, profile in enumerate(ORGS, start=1):
        churn_ms = range_start_ms + int(span * (0.25 + 0.3 * rng.random()))
        departments = [
            (next_id("department"), slug, name) for slug, name in DEPARTMENTS[: profile.departments]
        ]
        projects = [
            (next_id("project"), slug, name, next(colors))
            for slug, name in PROJECTS[: profile.projects]
        ]
        users = _build_users(profile, departments, projects, next_id, rng)
        agents = _build_agents(index, profile, projects, users, next_id, rng)
        numbers = [
            (
                next_id("phone"),
                f"+1 {rng.choice((415, 628, 646, 312, 737))} 555 {rng.randrange(100, 1000):04d}",
                n >= profile.phone_numbers - profile.released_numbers,
            )
            for n in range(profile.phone_numbers)
        ]
        created = range_start_ms - MS_PER_DAY * (120 + 40 * index)
        orgs.append(
            Org(index, profile, PLAN[profile.plan], created, churn_ms, departments, projects,
                users, agents, numbers)
        )  # fmt: skip
    return World(orgs)


def _build_users(
    profile: OrgProfile,
    departments: list[tuple[int, str, str]],
    projects: list[tuple[int, str, str, str]],
    next_id: Callable[[str], int],
    rng: random.Random,
) -> list[User]:
    names = list(FIRST_NAMES)
    rng.shuffle(names)
    names = ["sarah", *[n for n in names if n != "sarah"]]  # seed 003's top user everywhere
    activity = [1.0 / (rank + 1) ** 0.8 for rank in range(profile.users)]
    rng.shuffle(activity)
    human = set(rng.sample(range(profile.users - profile.deactivated), profile.human_agents))
    users = []
    for n in range(profile.users):
        user = User(
            id=next_id("user"),
            org_id=0,
            department_id=departments[rng.randrange(len(departments))][0],
            email=f"{names[n]}@{profile.slug}.example",
            human_agent=n in human,
            deactivated=n >= profile.users - profile.deactivated,
            weight=activity[n],
        )
        home = rng.randrange(len(projects))
        user.projects = Weighted(
            [p[0] for p in projects], [8.0 if i == home else 0.5 for i in range(len(projects))]
        )
        users.append(user)
    return users


def _build_agents(
    org_id: int,
    profile: OrgProfile,
    projects: list[tuple[int, str, str, str]],
    users: list[User],
    next_id: Callable[[str], int],
    rng: random.Random,
) -> list[Agent]:
    owners = [u for u in users if not u.deactivated]
    paid = {p.template: p for p in profile.paid}
    agents = []
    for n, slug in enumerate(profile.agents):
        template = AGENT_TEMPLATES[slug]
        model = AGENT_MODEL_PICK.pick(rng)
        if (profile.slug, slug) == RUNAWAY:
            model = MODEL["o3-mini"]  # a reasoning model stuck in a tool loop
        agents.append(
            Agent(
                id=next_id("agent"),
                org_id=org_id,
                project_id=projects[n % len(projects)][0],
                slug=slug,
                name=template.name,
                template=template,
                model=model,
                owner=owners[rng.randrange(len(owners))],
                deleted=n >= len(profile.agents) - profile.deleted_agents,
                weight=template.traffic * (0.6 + 0.8 * rng.random()),
                paid=paid.get(slug),
            )
        )
    for user in users:
        user.org_id = org_id
    return agents
