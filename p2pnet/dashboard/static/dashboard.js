// The p2pnet node dashboard. Polls dashboard/state and redraws.
//
// Safety: every string that may come from the network (model cards, peer
// ids, addresses, provenance) is written with createTextNode/textContent or
// as a plain attribute value (title, data-*); nothing is ever parsed as
// HTML: no HTML-setting properties, no inline handlers, no code from strings.
"use strict";

(function () {
  const POLL_MS = 2000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
                   "#db2777", "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#9333ea"];
  const ROLE_FILL = { "expert host": "#16a34a", user: "#94a3b8" };
  const VALIDATOR_RING = "#7c3aed";

  // ------------------------------------------------------------ DOM helpers

  function append(parent, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(parent, child);
      else if (child instanceof Node) parent.appendChild(child);
      else parent.appendChild(document.createTextNode(String(child)));
    }
    return parent;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.setAttribute("class", String(value));
      else if (key.startsWith("on")) throw new Error("no event attributes");
      else node.setAttribute(key, String(value));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    return append(setAttrs(document.createElement(tag), attrs), children);
  }

  function sv(tag, attrs, ...children) {
    return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
  }

  function fill(id, ...children) {
    const node = document.getElementById(id);
    node.replaceChildren();
    return append(node, children);
  }

  function table(id, head, rows) {
    return fill(id, el("thead", null, el("tr", null, head.map((h) => el("th", null, h)))),
                el("tbody", null, rows));
  }

  // ------------------------------------------------------------ formatting

  function str(value) { return value === null || value === undefined ? "" : String(value); }
  function shortId(id) { id = str(id); return id.length > 14 ? "…" + id.slice(-8) : id; }
  function shortHash(h) { h = str(h); return h.length > 12 ? h.slice(0, 10) + "…" : h; }
  function num(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits === undefined ? 0 : digits) : "–";
  }
  function duration(seconds) {
    if (typeof seconds !== "number") return "–";
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
  }
  function clock(ms) {
    if (typeof ms !== "number") return "–";
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function badge(text, kind) { return el("span", { class: "badge " + (kind || "") }, text); }
  function roleBadges(roles) {
    return (roles || []).map((r) => badge(r, "role-" + str(r).replace(/[^a-z]/g, "")));
  }
  function meter(value) {
    const v = typeof value === "number" && isFinite(value) ? Math.max(0, Math.min(1, value)) : 0;
    return el("meter", { min: 0, max: 1, low: 0.45, high: 0.55, optimum: 1, value: v });
  }

  // Names of peers: "this node", or the ids of the experts they host.
  function namer(state) {
    const experts = {};
    for (const card of state.experts || []) {
      (experts[card.peer_id] = experts[card.peer_id] || []).push(card.expert_id);
    }
    const name = function (peer) {
      const label = peer === state.me ? "this node" : shortId(peer);
      const hosted = experts[peer];
      return hosted ? label + " (" + hosted.join(", ") + ")" : label;
    };
    name.parts = function (peer) {
      return { label: peer === state.me ? "this node" : shortId(peer), hosted: experts[peer] || [] };
    };
    return name;
  }

  // A peer in a table: its short id (the full one as a tooltip), the experts it hosts below.
  function peerCell(peer, name) {
    const parts = name ? name.parts(peer) : { label: shortId(peer), hosted: [] };
    return el("td", { class: "peer", title: str(peer) }, el("span", { class: "mono" }, parts.label),
      parts.hosted.length ? el("div", { class: "small muted" }, parts.hosted.join(", ")) : null);
  }

  // ------------------------------------------------------------ this node

  function renderNode(state) {
    const n = state.node;
    const net = n.network || {};
    const reach = n.reachability || {};
    const msgs = n.messages || {};
    const q = n.queries || {};
    fill("top-id", el("span", { class: "mono", title: str(n.peer_id) }, shortId(n.peer_id)),
         " · ", roleBadges(n.roles), " · ", n.state === "ready" ? badge("ready", "ok") : badge(str(n.state), "bad"));
    const facts = [
      ["Peer ID", el("span", { class: "mono wrap", id: "node-peer-id" }, n.peer_id)],
      ["Roles", roleBadges(n.roles)],
      ["Version", "p2pnet " + str(n.version)],
      ["Uptime", duration(n.uptime_s)],
      ["Network", net.chain_id ? [el("b", null, net.chain_id), " · genesis ",
        el("span", { class: "mono", title: str(net.genesis_hash) }, shortHash(net.genesis_hash)),
        " · " + net.validators + " validators"] : str(net.note)],
      ["Reachability", [el("div", null, str(reach.summary)),
        el("ul", { class: "addrs" }, (reach.listen || []).map((a) => el("li", null,
          el("span", { class: "mono wrap" }, a.addr), " ", badge(a.scope, "scope")))),
        (reach.announced || []).length ? el("div", null, "announced: ", reach.announced.map((a) =>
          [el("span", { class: "mono wrap" }, a.addr), " ", badge(a.scope, "scope"), " "])) : null,
        el("div", { class: "hint" }, str(reach.note))]],
      ["API", el("span", { class: "mono" }, n.api)],
      ["Messages", "received " + num(msgs.received) + " · sent " + num(msgs.sent) + " · dropped " +
        num(msgs.dropped) + (n.banned ? " · banned peers " + n.banned : "")],
      ["Queries", "coordinated " + num(q.queries) + " · failed " + num(q.queries_failed) +
        " · in flight " + num(q.queries_in_flight) + " · experts known " + num(q.known_experts)],
    ];
    fill("node-facts", facts.map(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
  }

  // ------------------------------------------------------------ peers

  function nodeCircle(x, y, r, roles, title, dashed) {
    const isValidator = (roles || []).includes("validator");
    const host = (roles || []).includes("expert host");
    return sv("circle", {
      cx: x, cy: y, r: r, fill: host ? ROLE_FILL["expert host"] : ROLE_FILL.user,
      stroke: isValidator ? VALIDATOR_RING : "#ffffff", "stroke-width": isValidator ? 4 : 2,
      "stroke-dasharray": dashed ? "4 3" : null, opacity: dashed ? 0.55 : 1,
    }, sv("title", null, title));
  }

  function renderPeers(state) {
    const peers = state.peers || [];
    const connected = peers.filter((p) => p.connected).length;
    fill("peer-count", connected + " connected" + (peers.length > connected ? ", " + (peers.length - connected) + " known" : ""));
    const W = 640, H = 300, cx = W / 2, cy = H / 2;
    const shown = peers.slice(0, 48);
    const edges = [], nodes = [];
    shown.forEach((p, i) => {
      const a = Math.PI + (2 * Math.PI * i) / Math.max(1, shown.length);
      const x = cx + 240 * Math.cos(a), y = cy + 110 * Math.sin(a);
      if (p.connected) edges.push(sv("line", { x1: cx, y1: cy, x2: x, y2: y, class: "edge" }));
      const title = p.peer_id + "\n" + p.roles.join(", ") + (p.connected ? "" : " (not connected)") +
        "\nmessages " + p.received + ", dropped " + p.dropped;
      nodes.push(sv("g", { class: "peer-node", "data-peer": p.peer_id },
        nodeCircle(x, y, 13, p.roles, title, !p.connected),
        shown.length <= 24 ? sv("text", { x: x, y: y + 28, class: "label" }, shortId(p.peer_id)) : null,
        shown.length <= 24 ? sv("text", { x: x, y: y + 40, class: "sublabel" },
          "↓" + p.received + (p.dropped ? "  ✕" + p.dropped : "")) : null));
    });
    const me = state.node;
    nodes.push(sv("g", { class: "peer-node me" },
      nodeCircle(cx, cy, 20, me.roles, me.peer_id + "\n(this node) " + me.roles.join(", "), false),
      sv("text", { x: cx, y: cy + 36, class: "label strong" }, "this node")));
    fill("peer-graph", edges, nodes);
    fill("peer-legend",
      el("span", { class: "key" }, sv("svg", { width: 14, height: 14, viewBox: "0 0 14 14" },
        sv("circle", { cx: 7, cy: 7, r: 5, fill: ROLE_FILL["expert host"] })), " expert host"),
      el("span", { class: "key" }, sv("svg", { width: 14, height: 14, viewBox: "0 0 14 14" },
        sv("circle", { cx: 7, cy: 7, r: 5, fill: ROLE_FILL.user })), " user (no experts)"),
      el("span", { class: "key" }, sv("svg", { width: 14, height: 14, viewBox: "0 0 14 14" },
        sv("circle", { cx: 7, cy: 7, r: 5, fill: "#fff", stroke: VALIDATOR_RING, "stroke-width": 3 })), " validator ring"),
      el("span", { class: "key hint" }, "lines: this node's own connections; dashed: known, not connected"));
    const name = namer(state);
    table("peer-table", ["Peer", "Roles", "Link", "Height", "Messages", "Dropped", "Announced", "Addresses"],
      peers.map((p) => el("tr", { "data-peer": p.peer_id },
        peerCell(p.peer_id, name), el("td", null, roleBadges(p.roles)),
        el("td", null, p.connected ? badge("connected", "ok") : badge("known", "muted")),
        el("td", { class: "num" }, p.height === null || p.height === undefined ? "–" : p.height),
        el("td", { class: "num" }, p.received), el("td", { class: "num" + (p.dropped ? " warn" : "") }, p.dropped),
        el("td", null, p.last_announce_s === null ? "–" : duration(p.last_announce_s) + " ago"),
        el("td", { class: "mono small wrap" }, (p.addrs || []).slice(0, 2).join(" ")))));
  }

  // ------------------------------------------------------------ experts

  function renderExperts(state) {
    const experts = state.experts || [];
    const total = typeof state.experts_total === "number" ? state.experts_total : experts.length;
    fill("expert-count", total + " announced" + (total > experts.length ? ", " + experts.length + " shown" : ""));
    table("expert-table", ["Expert", "Host", "Model", "sha256", "Copies", "Domains", "Price /1k", "Speed (gen · prompt tok/s)", "Load"],
      experts.map((c) => el("tr", { "data-expert": c.expert_id, "data-peer": c.peer_id },
        el("td", { class: "strong expert-id" }, c.expert_id),
        el("td", { title: str(c.peer_id) }, el("span", { class: "mono" }, c.peer_id === state.me ? "this node" : shortId(c.peer_id))),
        el("td", null, c.model, c.quantization ? el("span", { class: "muted" }, " " + c.quantization) : null),
        el("td", { class: "mono", title: str(c.sha256) }, shortHash(c.sha256) || "–"),
        el("td", null, c.copies > 1 ? badge("copy · model " + String.fromCharCode(64 + Math.min(26, c.copy_group || 1)) +
          " ×" + c.copies, "copy") : "unique"),
        el("td", null, (c.domains || []).map((d) => badge(d, "domain"))),
        el("td", { class: "num" }, num(c.price_per_1k, 2)),
        el("td", { class: "num" }, num(c.gen_tps, 0) + " · " + num(c.prompt_tps, 0)),
        el("td", { class: "num" }, c.load + " / " + c.max_concurrency))));
  }

  // ------------------------------------------------------------ reputation

  function renderReputation(state) {
    const rep = state.reputation;
    if (!rep) {
      fill("reputation-height", "no ledger");
      fill("standings", el("p", { class: "hint" }, "This node runs without a genesis file, so it keeps no ledger and no standings."));
      fill("standing-chart"); fill("chart-legend");
      return;
    }
    fill("reputation-height", "at height " + rep.height);
    const name = namer(state);
    const byDomain = {};
    for (const s of rep.standings || []) (byDomain[s.domain] = byDomain[s.domain] || []).push(s);
    const domains = Object.keys(byDomain).sort();
    fill("standings", domains.length ? domains.map((d) => el("div", { class: "domain-block" },
      el("h3", null, "domain ", badge(d, "domain")),
      el("table", { class: "table standings" }, el("thead", null, el("tr", null,
        ["Expert host", "Standing", "", "Confidence", "Ratings"].map((h) => el("th", null, h)))),
        el("tbody", null, byDomain[d].map((s) => el("tr", { "data-peer": s.peer_id, "data-domain": s.domain },
          peerCell(s.peer_id, name), el("td", { class: "num strong" }, num(s.score, 3)), el("td", null, meter(s.score)),
          el("td", { class: "num" }, num(s.confidence, 3)), el("td", { class: "num" }, s.count)))))))
      : el("p", { class: "hint" }, "No ratings committed yet. They come from the validators' probe queries " +
          "(every 300 s by default), from `p2pnet feedback`, and from queries that several different experts answer."));
    renderChart(state, rep.history, name);
  }

  function renderChart(state, history, name) {
    const W = 640, H = 260, L = 44, R = 14, T = 12, B = 34;
    if (!history) { fill("standing-chart"); fill("chart-legend", el("span", { class: "hint" }, "reading the ledger…")); return; }
    const series = history.series || [];
    const top = Math.max(1, history.replayed_height || 0);
    let lo = top;
    for (const s of series) for (const p of s.points) lo = Math.min(lo, p[0]);
    lo = Math.min(lo, Math.max(0, top - 1));
    const x = (h) => L + ((h - lo) / Math.max(1, top - lo)) * (W - L - R);
    const y = (v) => T + (1 - v) * (H - T - B);
    const parts = [];
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      parts.push(sv("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(sv("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, v.toFixed(2)));
    }
    if (typeof history.prior === "number") {
      parts.push(sv("line", { x1: L, x2: W - R, y1: y(history.prior), y2: y(history.prior), class: "prior" },
        sv("title", null, "prior " + history.prior)));
    }
    const ticks = new Set();
    for (let i = 0; i <= 5; i++) ticks.add(Math.round(lo + ((top - lo) * i) / 5));
    for (const h of ticks) {
      parts.push(sv("text", { x: x(h), y: H - B + 16, class: "axis", "text-anchor": "middle" }, String(h)));
    }
    parts.push(sv("text", { x: (L + W - R) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, "ledger height"));
    series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const pts = s.points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
      const last = s.points[s.points.length - 1];
      const extended = last && last[0] < top ? [...pts, x(top).toFixed(1) + "," + y(last[1]).toFixed(1)] : pts;
      const title = name(s.peer_id) + " · " + s.domain + " · " + s.count + " ratings";
      parts.push(sv("polyline", { points: extended.join(" "), fill: "none", stroke: color, "stroke-width": 2.5,
        class: "series" }, sv("title", null, title)));
      if (s.points.length <= 60) {
        for (const p of s.points) parts.push(sv("circle", { cx: x(p[0]), cy: y(p[1]), r: 3.5, fill: color },
          sv("title", null, title + " · height " + p[0] + ": " + p[1])));
      }
    });
    fill("standing-chart", parts);
    fill("chart-legend", series.length ? series.map((s, i) => el("span", { class: "key" },
      sv("svg", { width: 18, height: 10, viewBox: "0 0 18 10" }, sv("rect", { x: 0, y: 3, width: 18, height: 4, fill: PALETTE[i % PALETTE.length] })),
      " " + name(s.peer_id) + " · " + s.domain)) : el("span", { class: "hint" }, "standing over ledger height: no ratings yet"),
      history.error ? el("div", { class: "bad" }, "replay stopped: " + history.error) : null);
  }

  // ------------------------------------------------------------ ledger

  function renderLedger(state) {
    const L = state.ledger;
    if (!L) {
      fill("ledger-height", "no ledger");
      fill("ledger-summary", el("p", { class: "hint" }, "This node runs without a genesis file."));
      fill("validator-table"); fill("block-table");
      return;
    }
    fill("ledger-height", "height " + L.height);
    const v = L.verify;
    fill("ledger-summary", el("div", { class: "facts-inline" },
      el("span", null, "chain ", el("b", null, L.chain_id)),
      el("span", { id: "verify-status" }, "verify: ", !v ? badge("checking…", "muted") : v.ok
        ? badge("OK up to height " + v.height, "ok") : badge("FAILED: " + str(v.error), "bad"),
        v ? el("span", { class: "muted" }, " (checked " + clock(v.checked_ms) + ")") : null)));
    const name = namer(state);
    const lastHeight = L.blocks.length ? L.blocks[0].height : null;
    table("validator-table", ["Validator", "Power", "Last commit signed", ""],
      L.validators.map((val) => el("tr", { "data-peer": val.peer_id },
        peerCell(val.peer_id, name), el("td", { class: "num" }, val.power),
        el("td", null, val.last_signed_height === null ? "none in the last " + L.votes_window + " blocks"
          : "height " + val.last_signed_height + ", round " + val.last_signed_round),
        el("td", null, lastHeight !== null && val.last_signed_height === lastHeight ? badge("signed the last block", "ok")
          : badge("not in the last commit", "muted")))));
    table("block-table", ["Height", "Time", "Proposer", "Signers", "Ratings"],
      L.blocks.map((b) => el("tr", { "data-height": b.height },
        el("td", { class: "num strong", title: str(b.hash) }, b.height),
        el("td", { class: "nowrap" }, clock(b.time_ms)),
        peerCell(b.proposer, name),
        el("td", { class: "num" }, b.signers.length + " / " + L.validators.length),
        el("td", null, b.ratings_total ? el("ul", { class: "ratings" }, b.ratings.map((r) => el("li", null,
          el("span", { class: "strong" }, str(r.expert_id)), " @ ", el("span", { class: "mono", title: str(r.respondent) }, shortId(r.respondent)),
          " · ", badge(str(r.domain), "domain"), " · score ", num(r.score, 2), " · ", str(r.signal),
          el("span", { class: "muted" }, " by " + shortId(r.rater)))),
          b.ratings_total > b.ratings.length ? el("li", { class: "muted" }, "… " + (b.ratings_total - b.ratings.length) + " more") : null)
          : el("span", { class: "muted" }, b.tx_count ? b.tx_count + " txs" : "empty")))));
  }

  // ------------------------------------------------------------ queries

  function renderQueries(state) {
    const Q = state.queries || { count: 0, queries: [] };
    fill("query-count", Q.count + " since the node started");
    const name = namer(state);
    fill("query-list", Q.queries.length ? Q.queries.map((q) => {
      const head = el("div", { class: "q-head" },
        q.ok ? badge("answered", "ok") : badge("failed " + str(q.error && q.error.status), "bad"),
        el("span", { class: "mono", title: str(q.query_id) }, q.query_id ? shortHash(q.query_id) : "–"),
        el("span", null, clock(q.time_ms)),
        el("span", null, "model ", el("b", null, str(q.model))),
        el("span", null, "domain ", badge(str(q.domain || "general"), "domain")),
        el("span", null, num(q.latency_ms) + " ms"),
        q.stream ? badge("stream", "muted") : null,
        q.cascade ? badge("cascade: " + str(q.cascade.path), "muted") : null);
      if (!q.ok) {
        return el("li", { class: "query failed", "data-query-id": str(q.query_id) }, head,
          el("div", { class: "q-why" }, str(q.error && q.error.message)));
      }
      const chosen = q.chosen || {};
      const rows = (q.respondents || []).map((r) => {
        const isChosen = r.peer_id === chosen.peer_id && r.expert_id === chosen.expert_id;
        return el("tr", { class: isChosen ? "chosen" : null },
          el("td", { class: "strong" }, str(r.expert_id)), peerCell(r.peer_id, name),
          el("td", null, badge(str(r.status), r.status === "ok" ? "ok" : "bad")),
          el("td", { class: "num" }, num(r.latency_ms) + " ms"), el("td", { class: "num" }, num(r.score, 2)),
          el("td", null, str(r.signal)), el("td", null, isChosen ? badge("chosen", "ok") : ""));
      });
      return el("li", { class: "query", "data-query-id": str(q.query_id) }, head,
        el("table", { class: "table compact" }, el("thead", null, el("tr", null,
          ["Expert", "Host", "Status", "Latency", "Score", "Signal", ""].map((h) => el("th", null, h)))),
          el("tbody", null, rows)),
        el("div", { class: "q-why" }, el("b", null, "why: "), str(q.reason) || "–",
          q.selection && q.selection.policy ? el("span", { class: "muted" }, " · asked by " + str(q.selection.policy) +
            (q.selection.reason ? ": " + str(q.selection.reason) : "")) : null,
          q.cascade ? el("span", { class: "muted" }, " · cascade: " + str(q.cascade.reason)) : null));
    }) : el("li", { class: "hint" }, "No queries yet. Ask one: p2pnet ask \"What is the capital of France?\""));
  }

  // ------------------------------------------------------------ polling

  let lastOk = 0;
  let lastState = null;

  function renderAll(state) {
    const parts = [renderNode, renderPeers, renderExperts, renderReputation, renderLedger, renderQueries];
    for (const render of parts) {
      try { render(state); } catch (err) { console.warn("dashboard: " + render.name + " failed", err); }
    }
    document.body.setAttribute("data-updated", String(state.time_ms));
  }

  function showLive() {
    const live = document.getElementById("live");
    const age = lastOk ? Math.round((Date.now() - lastOk) / 1000) : null;
    live.className = "live " + (age !== null && age < 3 * POLL_MS / 1000 ? "ok" : "stale");
    live.textContent = age === null ? "connecting…" : age < 3 * POLL_MS / 1000 ? "● live" : "node unreachable · last update " + age + " s ago";
  }

  async function poll() {
    try {
      const res = await fetch("dashboard/state", { cache: "no-store", credentials: "same-origin" });
      if (res.ok) {
        lastState = await res.json();
        lastOk = Date.now();
        renderAll(lastState);
      } else if (res.status === 401) {
        fill("top-id", "this node's API needs a key: open the URL that `p2pnet dashboard` prints");
      }
    } catch (err) {
      // the node is down or restarting: keep the last view, say so, try again
    }
    showLive();
    setTimeout(poll, POLL_MS);
  }

  setInterval(showLive, 1000);
  poll();
})();
