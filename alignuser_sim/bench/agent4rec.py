"""A faithful Agent4Rec-style loop: the baseline the decision cost of our one-call-per-page design is measured
against, on the same server, model, population and recommender.

What it reproduces of Agent4Rec's code (LehengTHU/Agent4Rec: `simulation/arena.py`, `avatar.py`,
`memory.py`), in our own code and wording:

- a thread pool of 500 workers (`simulate_all_avatars`), one task per agent, its session page after page
  with blocking calls;
- per page, the **reaction** call (`reaction_to_recommended_items`): traits, taste and rating tendency in the
  system message (with the memories retrieved once there are any), the page as
  `<- title -> <- History ratings: 3.52 -> <- Summary: ... ->` lines, and three steps asked for in free text:
  `MOVIE: ...; ALIGN: yes|no; REASON: ...` for every movie, `NUM: ...; WATCH: ...; REASON: ...`, then
  `MOVIE: ...; RATING: n; FEELING: ...` for each watched one, parsed with its regular expressions;
- a memory entry for the page (no LLM call: its importance score is fixed at 1), then the **next-decision**
  call (`make_next_decision`: a POSITIVE/NEGATIVE feeling, then `[EXIT]` or `[NEXT]`, found by substring),
  then a second memory entry; once more than 3 entries accumulated since the last reflection (every second
  page) the memory's **satisfaction reflection** call (`AvatarMemory.reflect`);
- after the session, one **interview** call (rate the recommender 1-10, `response_to_question`);
- every call `max_tokens=1000`, `temperature=0.2`, no schema, no validation.

Not reproduced: OpenAI embeddings for memory retrieval (no embedding endpoint here; its retriever always
includes the last k=5 entries, and a session's stream is a handful of entries, so the last 5 are taken),
wandb logging, and its retry-forever loop (bounded retries here; a call still failing is counted). The
watched titles are matched back to page ids by title (Agent4Rec maps them by their position in the reply).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alignuser_sim.bench.naive import run_sessions
from alignuser_sim.llm.accounting import LatencyHistogram

if TYPE_CHECKING:
    from alignuser_sim.core import Catalogue, ItemView
    from alignuser_sim.data.personas import Persona
    from alignuser_sim.recommenders.base import Recommender

AGENT4REC_POOL = 500  # simulate_all_avatars: ThreadPoolExecutor(max_workers=500)
AGENT4REC_MAX_TOKENS = 1000  # every ChatCompletion.create of avatar.py / memory.py
AGENT4REC_TEMPERATURE = 0.2
MEMORY_K = 5  # AvatarRetriver(k=5)
REFLECTION_THRESHOLD = 3  # AvatarMemory(reflection_threshold=3), importance 1 per entry
KINDS = ("reaction", "next_decision", "reflection", "interview")

# its parsing: the same patterns as arena.py / avatar.py
RATED = re.compile(r"MOVIE: (.+?); RATING: (\d+); FEELING: (.*)")
ALIGNED = re.compile(r"MOVIE: (.+?); ALIGN: (.+?); REASON: (.*)")
INTERVIEW = re.compile(r"(?<=RATING:|REASON:).*")

# trait texts: the three levels of each of Agent4Rec's traits, in our words and at its length
ACTIVITY = {
    1: "A very rare viewer, so seldom moved by recommendations that watching anything is an event. You watch "
       "movies only now and then, and you leave the recommender at once when even slightly unsatisfied.",
    2: "An occasional viewer, not often drawn in by recommendations, curious only about movies that match your "
       "taste closely. You watch now and then, and you tend to leave after a few unsatisfying pages.",
    3: "A movie lover who wants to see nearly everything recommended. Movies are at the heart of your life and "
       "recommendations are part of your routine; you are patient with the recommender and rarely leave early.",
}
CONFORMITY = {
    1: "A faithful follower whose ratings lean heavily on the movies' past ratings; you seldom disagree with "
       "them and usually rate as others did.",
    2: "A balanced judge who weighs both past ratings and your own taste; your ratings sometimes differ from "
       "the past ratings.",
    3: "An independent critic who ignores past ratings and rates by your own taste alone; your ratings often "
       "differ a lot from the past ratings.",
}
DIVERSITY = {
    1: "A highly selective viewer whose choices are tailored tightly to your own taste, leaving hardly any room "
       "for variety.",
    2: "A genre explorer now and then, who mostly keeps to the kinds of movies you prefer.",
    3: "A restless seeker of the unusual and the obscure, whose choices are so varied they fit no category.",
}
TRAITS_NOTE = ("Activity is how often you watch movies. Conformity is how much past ratings sway your own ratings. "
               "Diversity is how likely you are to watch movies outside your usual taste.")


def item_line(view: ItemView, mean_rating: float | None) -> str:
    summary = view.description or ("Genres: " + ", ".join(view.genres) if view.genres else "")
    rating = "unknown" if mean_rating is None else str(round(mean_rating, 2))
    return f"<- {view.title} -> <- History ratings: {rating} -> <- Summary: {summary} ->\n"


@dataclass
class Avatar:
    """One Agent4Rec-style agent: its traits as text and its memory stream (plain text entries)."""

    persona: Persona
    memory: list[str] = field(default_factory=list)
    importance: int = 0
    exited: bool = False

    def traits(self, *, taste: bool = True) -> str:
        p = self.persona
        lines = [f"Your activity trait is described as: {ACTIVITY[p.activity]}",
                 f"Your conformity trait is described as: {CONFORMITY[p.conformity or 2]}",
                 f"Your diversity trait is described as: {DIVERSITY[p.diversity]}"]
        if taste:
            lines.append(f"Beyond that, your movie tastes are: {p.taste or p.describe()}")
        return "\n".join(lines)

    def recent(self) -> str:
        return "\n".join(f"- {m}" for m in self.memory[-MEMORY_K:])

    def reaction_messages(self, page_text: str, page_no: int) -> list[dict[str, str]]:
        tendency = {1: "close to the average of past ratings", 2: "a little different from past ratings",
                    3: "quite different from past ratings"}[self.persona.conformity or 2]
        system = ("You are excellent at role-play. Imagine you are a user browsing a movie recommender. Your "
                  "social traits are:\n" + self.traits() + f"\nYour ratings tend to be {tendency}.\n" + TRAITS_NOTE)
        if self.memory:
            system += "\nWhat you remember that is relevant:" + self.recent()
        user = ("#### Recommended List ####\n" + f"PAGE {page_no}\n" + page_text
                + "Answer every movie of the Recommended List and explain your answers."
                + "\nFirst, say which movies fit your taste and which do not, with reasons, for every movie, in "
                  "this format:\nMOVIE: [movie name]; ALIGN: [yes or no]; REASON: [brief reason]"
                + "\nSecond, of the movies that fit your taste, choose how many to watch from your activity and "
                  "diversity traits, in this format:\nNUM: [number of movies you watch]; WATCH: [names of all "
                  "the movies you watch]; REASON: [brief reason];"
                + "\nThird, suppose you watch the chosen movies for the first time and rate each from 1 to 5 for "
                  "how much you liked it, given your feeling and your conformity trait, in this format:"
                + "\n MOVIE:[movie you watch]; RATING: [integer between 1-5]; FEELING: [sentence after watching]; "
                + "\n Add nothing else and stay realistic.")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def next_messages(self, page_no: int) -> list[dict[str, str]]:
        system = ("You are excellent at role-play. Imagine you are a user browsing a movie recommender. Your "
                  f"social traits are:\nYour activity trait is described as: {ACTIVITY[self.persona.activity]}"
                  f"\nYou are now on Page {page_no}. Browsing more pages tires you (past 2 pages a little, past 4 "
                  "pages a lot).\nWhat you remember that is relevant:\n" + self.recent())
        user = ("First, form an overall feeling from your memory, your activity trait and how satisfied you are "
                "with the recommender.\nIf it is positive, write: POSITIVE: [reason]\nIf it is negative, write: "
                "NEGATIVE: [reason]\nThen judge how tired you are; an inactive user tires sooner.\nNow decide "
                "whether to keep browsing or to leave the recommender, from your feeling, activity trait and "
                "tiredness.\nYou leave when your feeling is negative or you are tired, above all with a low "
                "activity trait.\nTo leave, write: [EXIT]; Reason: [brief reason]\nTo keep browsing, write: "
                "[NEXT]; Reason: [brief reason]")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def reflection_messages(self) -> list[dict[str, str]]:
        prompt = (f"\n{self.recent()}\n\n\nFrom the information above only, describe in one sentence how you "
                  "feel about the recommendations.\nUse exactly this format:\n[unsatisfied/satisfied] with the "
                  "recommendations because [reason].\n")
        return [{"role": "user", "content": prompt}]

    def interview_messages(self) -> list[dict[str, str]]:
        system = ("You are excellent at role-play. Imagine you are a user who has just finished browsing a movie "
                  "recommender. Your social traits are:\n" + self.traits() + "\n" + TRAITS_NOTE)
        question = ("Are you satisfied with the recommender you just used? Rate it from 1 to 10 and explain.\n "
                    "Answer in this format: RATING: [integer between 1 and 10]; REASON: [explanation]; put only the "
                    "rating in RATING and all explanation in REASON.")
        memories = "\n".join(f"- {m}" for m in self.memory)
        user = (f"\nWhat you remember of this session:\n{memories}\nAs this user, in an interview, answer the "
                f"question:\n{question}\n")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def remember(self, text: str, reflect: Callable[[], str | None]) -> None:
        """Agent4Rec's add_memory: importance 1 an entry; past the threshold, one reflection call."""
        self.memory.append(text)
        self.importance += 1
        if self.importance > REFLECTION_THRESHOLD:
            reflection = reflect()
            if reflection:
                self.memory.append(reflection)
            self.importance = 0


@dataclass
class PageReaction:
    watched: dict[str, float | None]  # page item id -> rating
    parsed: bool  # the reply had the lines the regexes look for


def parse_reaction(reply: str, page: list[ItemView]) -> PageReaction:
    """Its regexes on the free-text reply; watched titles mapped back to page ids by title."""
    rated = RATED.findall(reply)
    aligned = ALIGNED.findall(reply)
    by_title = {view.title.strip().lower(): view.item_id for view in page}
    watched: dict[str, float | None] = {}
    for title, rating, _feeling in rated[: len(page)]:
        key = title.strip().strip(";").strip().lower()
        item_id = by_title.get(key) or next((i for t, i in by_title.items() if key and (key in t or t in key)), None)
        if item_id is not None:
            value = int(rating)
            watched[item_id] = float(value) if 1 <= value <= 5 else None
    return PageReaction(watched, bool(rated or aligned))


def wants_exit(reply: str) -> bool:
    return "[EXIT]" in reply or "[exit]" in reply


@dataclass
class CallTally:
    calls: int = 0
    failures: int = 0
    cut: int = 0  # finish_reason == "length": the reply reached max_tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0


def agent4rec_loop(
    personas: Sequence[Persona],
    catalogue: Catalogue,
    recommender: Recommender,
    *,
    endpoint: str,
    model: str,
    page_cap: int,
    items_per_page: int,
    mean_ratings: dict[str, float] | None = None,
    pool_size: int = AGENT4REC_POOL,
    max_tokens: int = AGENT4REC_MAX_TOKENS,
    temperature: float = AGENT4REC_TEMPERATURE,
    timeout_s: float = 900.0,
    max_retries: int = 2,
    on_page: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every agent's Agent4Rec-style session in a `pool_size` thread pool (see the module docstring); the
    recommender shared under a lock. Returns a benchmark row: totals, per-kind call counts, rates."""
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key="EMPTY", max_retries=max_retries, timeout=timeout_s)
    means = mean_ratings or {}
    lock = threading.Lock()
    latency = LatencyHistogram()
    tally = {kind: CallTally() for kind in KINDS}
    pages = Counter(decisions=0, unparsed=0, watched=0, exits=0)

    def ask(kind: str, messages: list[dict[str, str]]) -> str | None:
        t0 = time.perf_counter()
        text, usage, cut = None, None, False
        try:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                   temperature=temperature)
            text, usage = reply.choices[0].message.content or "", reply.usage
            cut = reply.choices[0].finish_reason == "length"
        except openai.APIError:
            pass
        with lock:
            t = tally[kind]
            t.calls += 1
            t.failures += text is None
            t.cut += cut
            if usage is not None:
                t.prompt_tokens += usage.prompt_tokens
                t.completion_tokens += usage.completion_tokens
            latency.add(time.perf_counter() - t0)
        return text

    def session(persona: Persona) -> None:
        avatar = Avatar(persona)
        uid = persona.user_id
        page_no = 0
        while not avatar.exited and page_no < page_cap:
            with lock:
                items = recommender.pages([uid], items_per_page)[uid]
            if not items:
                break
            page_no += 1
            page = catalogue.page(items)
            text = "".join(item_line(v, means.get(v.item_id)) for v in page)
            reaction = parse_reaction(ask("reaction", avatar.reaction_messages(text, page_no)) or "", page)
            titles = {v.item_id: v.title for v in page}
            watched = [titles[i] for i in reaction.watched]
            others = [v.title for v in page if v.item_id not in reaction.watched]
            avatar.remember(f"On page {page_no} the recommender showed me: {', '.join(titles.values())}; I watched "
                            f"{watched} and rated them {list(reaction.watched.values())}. I disliked the rest: "
                            f"{others}.", lambda: ask("reflection", avatar.reflection_messages()))
            decision = ask("next_decision", avatar.next_messages(page_no)) or ""
            avatar.exited = wants_exit(decision)
            avatar.remember(f"After {page_no} pages I left the recommender." if avatar.exited else
                            f"I turned to page {page_no + 1}.", lambda: ask("reflection", avatar.reflection_messages()))
            with lock:
                recommender.feedback_batch([(uid, reaction.watched, list(items))])
                pages["decisions"] += 1
                pages["unparsed"] += not reaction.parsed
                pages["watched"] += len(reaction.watched)
                pages["exits"] += avatar.exited
            if on_page is not None:
                on_page()
        INTERVIEW.findall(ask("interview", avatar.interview_messages()) or "")

    wall = run_sessions(session, personas, pool_size)
    client.close()
    by_kind = {kind: vars(t) for kind, t in tally.items()}
    row: dict[str, Any] = {
        "mode": f"Agent4Rec-style (pool {pool_size})", "agents": len(personas), "elapsed_s": round(wall, 2),
        "decisions": pages["decisions"], "failures": sum(t.failures for t in tally.values()),
        "llm_requests": sum(t.calls for t in tally.values()),
        "prompt_tokens": sum(t.prompt_tokens for t in tally.values()),
        "completion_tokens": sum(t.completion_tokens for t in tally.values()),
        "replies_cut": sum(t.cut for t in tally.values()), "unparsed_pages": pages["unparsed"],
        "watched": pages["watched"], "exits": pages["exits"], "concurrency": min(pool_size, len(personas)),
        "latency_p50_s": round(latency.percentile(0.5) or 0.0, 4),
        "latency_p99_s": round(latency.percentile(0.99) or 0.0, 4), "calls_by_kind": by_kind,
    }
    return row


def decision_costs(row: dict[str, Any]) -> dict[str, Any]:
    """LLM calls, prompt and output tokens per page decision (a decision: one agent on one page), the same for
    our simulation's rows and the Agent4Rec-style loop's."""
    pages = max(1, row["decisions"])
    return {"calls_per_page": round(row.get("llm_requests", row["decisions"]) / pages, 3),
            "prompt_tokens_per_decision": round(row["prompt_tokens"] / pages, 1),
            "output_tokens_per_decision": round(row["completion_tokens"] / pages, 1)}


def item_mean_ratings(interactions: Any) -> dict[str, float]:
    """Each item's mean rating over the dataset (Agent4Rec's "History ratings"); empty without ratings."""
    import pyarrow.compute as pc

    rated = interactions.filter(pc.is_valid(interactions["rating"]))
    if rated.num_rows == 0:
        return {}
    grouped = rated.group_by("item_id").aggregate([("rating", "mean")])
    return dict(zip(grouped["item_id"].to_pylist(), grouped["rating_mean"].to_pylist(), strict=True))
