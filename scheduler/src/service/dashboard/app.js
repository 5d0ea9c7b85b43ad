// Charter's dashboard: reads /v1/overview, follows /v1/events and reads the
// overview again after each burst of events. Every value from the server
// goes into the page as text (textContent), never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
let view = null;
let skew = 0; // server time minus this browser's time
let refreshTimer = null;
let logSource = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "title") e.title = v;
    else if (k === "onclick") e.addEventListener("click", v);
  }
  for (const k of kids) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function table(head, rows) {
  const t = el("table", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(r);
  return t;
}

function fill(id, ...nodes) {
  const body = document.querySelector(`#${id} .body`);
  body.replaceChildren(...nodes);
}

function time(ms) {
  if (!ms) return "-";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function left(ms) {
  const s = Math.round((ms - (Date.now() + skew)) / 1000);
  if (s <= 0) return "expiring";
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const b = el("span", { class: "bar", title: `${used} of ${total}` }, el("span"));
  b.firstChild.style.width = `${pct}%`;
  return b;
}

function cores(m) {
  return (m / 1000).toFixed(m % 1000 === 0 ? 0 : 1);
}

function gib(b) {
  return (b / 2 ** 30).toFixed(1);
}

function stateClass(s) {
  if (["granted", "running", "ready", "active", "succeeded", "healthy", "done"].includes(s)) return "ok";
  if (["failed", "lost", "down", "rolled_back", "unhealthy", "expired", "revoked"].includes(s)) return "bad";
  if (["pending", "draining", "restarting"].includes(s)) return "warn";
  return "mute";
}

function renderCluster(v) {
  const c = v.cluster;
  const members = c.members.map((m) =>
    el("tr", {}, el("td", {}, m.id), el("td", {}, m.addr), el("td", { class: m.leader ? "ok" : "mute" }, m.leader ? "leader" : "")));
  fill("cluster",
    el("p", {},
      el("span", { class: c.healthy ? "ok" : "bad" }, c.healthy ? "healthy" : (c.fatal || "no leader")),
      ` · leader ${c.leader ?? "none"} · term ${c.term} · commit ${c.commit_index} · applied ${c.applied_index} · this member ${c.member} (${c.role})`),
    table(["MEMBER", "ADDRESS", ""], members));
}

function renderNodes(v) {
  fill("nodes", table(["NODE", "STATE", "CPU", "MEMORY", "LABELS"], v.nodes.map((n) =>
    el("tr", { "data-node": n.name },
      el("td", {}, n.name),
      el("td", { class: stateClass(n.state) }, n.state),
      el("td", {}, bar(n.cpu[0], n.cpu[1]), ` ${cores(n.cpu[0])}/${cores(n.cpu[1])}`),
      el("td", {}, bar(n.memory[0], n.memory[1]), ` ${gib(n.memory[0])}/${gib(n.memory[1])} GiB`),
      el("td", { class: "wrap" }, ...Object.entries(n.labels).map(([k, val]) => el("span", { class: "tag" }, `${k}=${val}`)))))));
}

function renderLeases(v) {
  const f = $("#lease-filter").value.trim().toLowerCase();
  const rows = v.leases
    .filter((l) => !f || [l.id, l.principal, l.nodes.join(","), l.reason].join(" ").toLowerCase().includes(f))
    .map((l) =>
      el("tr", { "data-lease-id": l.id },
        el("td", {}, l.id),
        el("td", {}, l.principal),
        el("td", {}, l.nodes.join(",")),
        el("td", {}, cores(l.cpu)),
        el("td", { "data-expires": l.expires_at }, left(l.expires_at)),
        el("td", {}, l.token),
        el("td", { class: "wrap" }, l.reason)));
  fill("leases", rows.length ? table(["ID", "OWNER", "NODES", "CPU", "EXPIRES IN", "TOKEN", "REASON"], rows) : el("p", { class: "mute" }, "no live lease"));
  const q = v.queue.map((l) =>
    el("tr", { "data-lease-id": l.id },
      el("td", {}, l.id), el("td", {}, l.principal), el("td", {}, cores(l.cpu)),
      el("td", { "data-expires": l.wait_until }, left(l.wait_until)),
      el("td", { class: "wrap" }, l.why)));
  fill("queue", q.length ? table(["ID", "OWNER", "CPU", "GIVES UP IN", "WHY"], q) : el("p", { class: "mute" }, "nothing waits"));
}

function renderTasks(v) {
  const rows = v.tasks.map((t) =>
    el("tr", { "data-task-id": t.id, class: "clickable", title: "show its log", onclick: () => openLog(t.id) },
      el("td", {}, t.id),
      el("td", {}, t.name || "-"),
      el("td", {}, t.principal),
      el("td", { class: stateClass(t.state) }, t.state, t.exit_code != null ? ` (${t.exit_code})` : ""),
      el("td", { class: stateClass(t.health) }, t.health || "-"),
      el("td", {}, t.node || "-"),
      el("td", { class: "wrap mute" }, t.message)));
  fill("tasks", rows.length ? table(["ID", "NAME", "OWNER", "STATE", "HEALTH", "NODE", ""], rows) : el("p", { class: "mute" }, "no task"));
}

function renderCron(v) {
  const rows = v.cron.map((j) => {
    const runs = el("span", { class: "runs" });
    for (const r of [...j.runs].reverse()) {
      const late = !r.manual && r.late_ms > 1000;
      runs.append(el("span", {
        class: `run ${r.state}${late ? " late" : ""}`,
        title: `${time(r.scheduled_at)} ${r.state}${late ? `, ${r.late_ms} ms late` : ""}${r.reason ? ": " + r.reason : ""}`,
      }));
    }
    return el("tr", { "data-job": j.name },
      el("td", {}, j.name),
      el("td", {}, j.owner),
      el("td", { class: "wrap" }, j.schedule, j.timezone ? ` (${j.timezone})` : ""),
      el("td", { class: j.paused ? "warn" : "", title: j.next.map(time).join("\n") },
        j.paused ? "paused" : (j.next.length ? time(j.next[0]) : "-")),
      el("td", {}, runs));
  });
  fill("cron", rows.length ? table(["JOB", "OWNER", "SCHEDULE", "NEXT TICK", "RECENT RUNS"], rows) : el("p", { class: "mute" }, "no cron job"));
}

function renderApps(v) {
  const parts = [];
  for (const a of v.apps) {
    parts.push(el("h3", { "data-app": a.name }, a.name, el("span", { class: "mute" }, ` · ${a.owner} · active deployment ${a.active ?? "none"}`)));
    for (const d of a.deployments) {
      const steps = el("div", { class: "steps" }, ...d.steps.map((s) =>
        el("span", { class: `step ${s.state}`, title: `${time(s.started_at)}${s.message ? ": " + s.message : ""}` },
          s.step, s.ended_at ? ` ${((s.ended_at - s.started_at) / 1000).toFixed(1)}s` : "")));
      const servers = d.servers.map((s) => `task ${s.task} on ${s.node || "?"} ${s.state}/${s.health || "-"}`).join(" · ");
      parts.push(el("div", { "data-deployment-id": d.id },
        el("div", {}, `#${d.id} `, el("span", { class: stateClass(d.status) }, d.status),
          ` ${d.commit ? d.commit.slice(0, 10) : "head"} (${d.trigger}) ${time(d.created_at)}`),
        steps,
        servers ? el("div", { class: "mute" }, servers) : null,
        d.reason ? el("div", { class: "bad" }, d.reason) : null,
        d.build_log_tail ? el("pre", {}, d.build_log_tail) : null));
    }
  }
  fill("apps", ...(parts.length ? parts : [el("p", { class: "mute" }, "no app")]));
}

function render(v) {
  view = v;
  skew = v.now - Date.now();
  $("#who").textContent = `${v.principal}${v.admin ? " (admin)" : ""}`;
  renderCluster(v);
  renderNodes(v);
  renderLeases(v);
  renderTasks(v);
  renderCron(v);
  renderApps(v);
}

async function refresh() {
  refreshTimer = null;
  const r = await fetch("/v1/overview", { credentials: "same-origin" });
  if (r.status === 401 || r.status === 403) {
    showLogin(r.status === 403 ? "this token may not read the dashboard" : "");
    return false;
  }
  if (!r.ok) return true;
  $("#login-box").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  render(await r.json());
  return true;
}

function soon() {
  if (!refreshTimer) refreshTimer = setTimeout(refresh, 150);
}

function showLogin(msg) {
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login-box").hidden = false;
  $("#login-error").textContent = msg || "";
}

function follow() {
  const src = new EventSource("/v1/events?tail=50");
  src.onopen = () => $("#live").classList.add("on");
  src.onerror = () => $("#live").classList.remove("on");
  src.onmessage = (m) => {
    const e = JSON.parse(m.data);
    const list = $("#events .body");
    const who = e.principal ? ` (${e.principal})` : "";
    const li = el("li", { class: "new", "data-type": e.type, "data-index": e.index },
      `${time(e.at_ms)} #${e.index} ${e.type} ${e.subject}${who}${e.detail ? ": " + e.detail : ""}`);
    list.prepend(li);
    setTimeout(() => li.classList.remove("new"), 1500);
    while (list.children.length > 200) list.lastChild.remove();
    soon();
  };
}

function openLog(id) {
  if (logSource) logSource.close();
  const box = $("#log");
  const pre = box.querySelector("pre");
  pre.textContent = "";
  $("#log-task").textContent = id;
  box.hidden = false;
  logSource = new EventSource(`/v1/tasks/${id}/logs?follow=1`);
  const add = (m) => {
    pre.textContent += m.data + "\n";
    pre.scrollTop = pre.scrollHeight;
  };
  logSource.addEventListener("stdout", add);
  logSource.addEventListener("stderr", add);
  logSource.addEventListener("error", (m) => {
    if (m.data) pre.textContent += JSON.parse(m.data).error + "\n";
    logSource.close();
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#lease-filter").addEventListener("input", () => view && renderLeases(view));
  $("#log-close").addEventListener("click", () => {
    if (logSource) logSource.close();
    $("#log").hidden = true;
  });
  setInterval(() => {
    for (const td of document.querySelectorAll("[data-expires]")) td.textContent = left(Number(td.dataset.expires));
  }, 1000);
  const failed = new URLSearchParams(location.search).get("login");
  if (failed) history.replaceState(null, "", "/");
  if (await refresh()) follow();
  else if (failed) showLogin(failed === "refused" ? "that token was refused" : "that is not a token");
});
