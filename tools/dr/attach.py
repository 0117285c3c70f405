"""``dds-admin dr attach`` and ``dr detach`` (DESIGN §12), run against the primary.

**attach** checks both sites, then pushes the DR records: first the site's (mode
``follower`` of this cluster: it refuses client writes from then on), then the
primary's (mode ``primary``, ``site`` = the site's URL: its write votes carry their time
and the DR tag from then on), and runs the follower in the foreground unless
``--no-follow``.  Refused, with nothing pushed, when the site cannot be reached, is this
very cluster, was promoted, follows another cluster or has a DR site of its own; or
when this cluster is itself a follower.  Attaching again to the same site changes
nothing and starts the follower.

**detach** sets the primary's ``site`` to empty: its votes stop carrying tags (the
client journals stop growing); the DR site stays a follower (refusing client writes)
until it is promoted or attached to another primary, and a running follower stops.
"""

from __future__ import annotations

from typing import Any

import attrs
import click

from dds.records import DRRecord

from dds.tools import ui
from dds.tools.cli import cluster_target, fail, reports_errors
from dds.tools.cluster import Target
from dds.tools.dr.runfollow import FollowOptions, follower_options
from dds.tools.dr.site import SiteOptions, SiteURL, parse_site_url, site_options, site_target
from dds.tools.runner import AdminError, run

__all__ = ["attach", "detach", "attach_records", "refusal"]


def refusal(primary: Any, site: Any, primary_name: str) -> str | None:
    """Why ``site`` (a ``ClusterView``) may not become the DR site of ``primary``; None
    if it may."""
    prec, srec = primary.dr, site.dr
    if prec is not None and prec.mode == "follower":
        return (f"this cluster is itself the DR site of {prec.primary!r}: attach a DR site "
                "to a primary")
    if {(b.address, b.port) for b in primary.map.bricks.values()} & \
            {(b.address, b.port) for b in site.map.bricks.values()}:
        return "the site is this cluster (they share bricks)"
    if srec is None:
        return None
    if srec.promoted:
        return (f"the site is a primary promoted at epoch {srec.epoch} (from "
                f"{srec.primary!r}): it takes client writes")
    if srec.mode == "follower" and srec.primary != primary_name:
        return f"the site already follows {srec.primary!r}"
    if srec.attached:
        return f"the site is a primary with a DR site of its own ({srec.site})"
    return None


def attach_records(primary: Any, site: Any, url: SiteURL, primary_name: str
                   ) -> tuple[DRRecord, DRRecord]:
    """The DR records the site and the primary must hold: the ones they hold if those
    say so already (nothing to push), else new versions."""
    srec, prec = site.dr, primary.dr
    want_site = DRRecord(srec.version + 1 if srec else 1, "follower", 0, primary_name)
    if srec is not None and attrs.evolve(srec, version=want_site.version) == want_site:
        want_site = srec
    want_primary = DRRecord(prec.version + 1 if prec else 1, "primary",
                            prec.epoch if prec else 0, prec.primary if prec else "",
                            url.text(), prec.replay_until_ms if prec else 0)
    if prec is not None and attrs.evolve(prec, version=want_primary.version) == want_primary:
        want_primary = prec
    return want_site, want_primary


async def attach_site(reactor: Any, target: Target, site_t: Target) -> dict[str, Any]:
    """Check both sites and push the DR records (site first); what was done."""
    from dds.tools.dr.records import push_dr, view
    ui.say(f"checking the primary {target.cluster} and the DR site {site_t.cluster}")
    primary = await view(reactor, target)
    site = await view(reactor, site_t)
    problem = refusal(primary, site, target.cluster)
    if problem is not None:
        raise AdminError(f"dr attach refused: {problem}; nothing was pushed")
    url = SiteURL(site_t.seeds, site_t.cluster)
    want_site, want_primary = attach_records(primary, site, url, target.cluster)
    warnings: list[str] = []
    if want_site is not site.dr:
        warnings += await push_dr(reactor, site, want_site, ui.say)
    if want_primary is not primary.dr:
        warnings += await push_dr(reactor, primary, want_primary, ui.say)
    for w in warnings:
        ui.err.print(f"[yellow]warning:[/yellow] {w}")
    return {"primary": target.cluster, "site": url.text(),
            "site_record": want_site.canonical(), "primary_record": want_primary.canonical(),
            "changed": want_site is not site.dr or want_primary is not primary.dr,
            "warnings": warnings}


@click.command("attach")
@cluster_target
@click.option("--site", "url", default=None, metavar="dds://HOST:PORT[,...]/CLUSTER",
              help="the DR site (with --site-dir: optional, the local cluster's)")
@site_options
@click.option("--no-follow", is_flag=True, help="only attach; run `dr follow` later")
@follower_options
@click.option("--json", "as_json", is_flag=True, help="print what was done as JSON")
@reports_errors
def attach(target: Target, url: str | None, site: SiteOptions, no_follow: bool,
           follower: FollowOptions, as_json: bool) -> None:
    """Make a second cluster (the DR site) follow this one through the change stream,
    then run the follower (until interrupted; `dr follow` resumes it).  The site may
    have another size and placement; from now on it refuses client writes."""
    from dds.tools.dr.runfollow import _start_logging, run_follower, run_or_exit

    site_t = site_target(parse_site_url(url) if url else None, site)
    if not no_follow:
        _start_logging(follower)

    async def go(reactor: Any) -> dict[str, Any]:
        done = await attach_site(reactor, target, site_t)
        if as_json or no_follow:
            ui.say(f"{done['primary']} is attached to the DR site {done['site']}")
        if no_follow:
            return done
        ui.say(f"{done['primary']} is attached to {done['site']}: following (Ctrl-C "
               "stops; `dds-admin dr follow` resumes)")
        done["follower"] = await run_follower(reactor, target, site_t, follower)
        return done
    result = run_or_exit(go)
    if as_json:
        ui.print_json(result)
    elif no_follow:
        ui.out.print(f"attached: {result['primary']} -> {result['site']}"
                     + ("" if result["changed"] else " (already)"))


async def detach_site(reactor: Any, target: Target) -> dict[str, Any]:
    from dds.tools.dr.records import push_dr, view
    primary = await view(reactor, target)
    rec = primary.dr
    if rec is None or not rec.attached:
        return {"primary": target.cluster, "changed": False, "warnings": []}
    new = attrs.evolve(rec, version=rec.version + 1, site="")
    warnings = await push_dr(reactor, primary, new, ui.say)
    return {"primary": target.cluster, "changed": True, "was": rec.site,
            "warnings": warnings}


@click.command("detach")
@cluster_target
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def detach(target: Target, as_json: bool) -> None:
    """Stop following: the primary's votes no longer carry DR tags and a running
    follower stops.  The DR site keeps refusing client writes (promote it, or attach it
    again)."""
    try:
        result = run(lambda reactor: detach_site(reactor, target))
    except AdminError as e:
        fail(e.lines)
    for w in result["warnings"]:
        ui.err.print(f"[yellow]warning:[/yellow] {w}")
    if as_json:
        ui.print_json(result)
    else:
        ui.out.print(f"detached {target.cluster} from {result['was']}" if result["changed"]
                     else f"{target.cluster} has no DR site attached")
