// cc-execute dashboard: plain JavaScript, no build step.
// Everything live comes over one WebSocket (/live); older log pages come from GET /api/tasks/<id>/log.
// Task output is only ever put in the page as text (textContent), never as HTML.
"use strict";

(() => {
  const MAX_CHARS = 1_000_000; // most output characters the page keeps; older chunks are dropped
  const ACTIVE = new Set(["queued", "scheduled", "deferred", "running"]);

  const $ = (id) => document.getElementById(id);

  function h(tag, props = {}, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid);
    return node;
  }

  // ---- formatting ------------------------------------------------------------------------

  const state = { queue: null, progress: {}, offset: 0, taskId: null, record: null, worker: undefined };

  const serverNow = () => Date.now() + state.offset;

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
    if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 10) return `${s.toFixed(2)} s`;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  function fmtAgo(iso) {
    if (!iso) return "—";
    const s = Math.max(0, (serverNow() - Date.parse(iso)) / 1000);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(iso).toLocaleDateString();
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const two = (n) => String(n).padStart(2, "0");
    const time = `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
    const today = new Date(serverNow()).toDateString() === d.toDateString();
    return today ? time : `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${time}`;
  }

  // A time to come, as the pause banner gives one: in UTC, with the date unless it is today's.
  function fmtUtc(iso) {
    const text = new Date(iso).toISOString();
    const today = new Date(serverNow()).toISOString().slice(0, 10) === text.slice(0, 10);
    return `${today ? "" : `${text.slice(0, 10)} `}${text.slice(11, 16)} UTC`;
  }

  function fmtIn(iso) {
    const s = (Date.parse(iso) - serverNow()) / 1000;
    if (s <= 0) return "due now";
    if (s < 60) return `in ${Math.ceil(s)} s`;
    const m = Math.round(s / 60);
    if (m < 60) return `in ${m} min`;
    if (m < 1440) return `in ${Math.floor(m / 60)} h${m % 60 ? ` ${m % 60} min` : ""}`;
    const hours = Math.floor((m % 1440) / 60);
    return `in ${Math.floor(m / 1440)} d${hours ? ` ${hours} h` : ""}`;
  }

  const dueText = (iso) => (iso ? `${fmtIn(iso)} · ${fmtUtc(iso)}` : "—");

  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1000) return `${n} B`;
    if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
    if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
    return `${(n / 1e9).toFixed(2)} GB`;
  }

  const fmtCount = (n) => (n === null || n === undefined ? "—" : n.toLocaleString("en-US"));
  const fmtCost = (usd) => (typeof usd === "number" ? `$${usd.toFixed(4)}` : "—");

  function exitText(result) {
    if (!result) return "—";
    if (result.cancelled) return "cancelled";
    if (result.timed_out) return "timed out";
    if (result.signal !== null && result.signal !== undefined) return `signal ${result.signal}`;
    if (result.exit_code !== null && result.exit_code !== undefined) return `exit ${result.exit_code}`;
    return "—";
  }

  function progressText(id) {
    // The followed task's totals come with its output (exactly what the page shows); others from the queue.
    const p = state.live && state.live.id === id ? state.live : state.progress[id];
    return p ? `${fmtBytes(p.bytes)} · ${fmtCount(p.lines)} lines` : "";
  }

  function specTitle(spec) {
    const text = spec.agent === "command" ? (spec.argv || []).join(" ") : spec.task || "";
    return text.replace(/\s+/g, " ").trim() || "(empty)";
  }

  const badge = (status) => h("span", { class: `badge ${status}`, text: status });

  // ---- logging in --------------------------------------------------------------------------
  // No cookie: a browser sends cookies to every port of a host, so another program on another port of this
  // machine would get it. The session lives in sessionStorage instead, which is per origin (scheme, host and
  // port): no other port's page can read it. This script sends it itself: first on each /live connection,
  // and as "Authorization: Bearer" on the JSON endpoints. The token comes once, from the login link's
  // fragment (never sent over HTTP) or the form, and is swapped for a session on /live.

  const SESSION_KEY = "ccx-dashboard-session";

  const login = {
    token: null, // held only until /live answers with a session

    get session() {
      return sessionStorage.getItem(SESSION_KEY);
    },

    // Take the token from "#token=…", and drop it from the address bar and the history at once.
    takeFragment() {
      const token = new URLSearchParams(location.hash.slice(1)).get("token");
      if (token === null) return false;
      history.replaceState(history.state, "", location.pathname + location.search);
      this.token = token;
      sessionStorage.removeItem(SESSION_KEY);
      return true;
    },

    credential() {
      return this.token ? { token: this.token } : { session: this.session };
    },

    has() {
      return Boolean(this.token || this.session);
    },

    store(session) {
      sessionStorage.setItem(SESSION_KEY, session);
      this.token = null;
    },

    // The session is over (or never was): forget it and ask for the token, saying why.
    end(message) {
      sessionStorage.removeItem(SESSION_KEY);
      this.token = null;
      live.stop();
      showLogin(message);
    },
  };

  function authHeader() {
    return { Authorization: `Bearer ${login.session || ""}` };
  }

  // GET a JSON endpoint with the session; a 401 ends the session with the server's sentence.
  async function api(url) {
    const response = await fetch(url, { cache: "no-store", headers: authHeader() });
    const data = await response.json();
    if (response.status === 401) login.end(data.error);
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  }

  function showLogin(message) {
    $("login-view").hidden = false;
    $("login-msg").textContent = message || "";
    $("login-msg").hidden = !message;
    $("logout").hidden = true;
    showBanner("");
    const pill = $("conn");
    pill.textContent = "logged out";
    pill.className = "pill bad";
    route();
  }

  function start() {
    $("login-view").hidden = true;
    $("login-msg").hidden = true;
    route();
    live.start();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    login.token = $("token").value;
    sessionStorage.removeItem(SESSION_KEY);
    $("token").value = "";
    start();
  });

  // A login link opened in a tab already at that address only changes the fragment: no reload.
  window.addEventListener("hashchange", () => {
    if (login.takeFragment()) {
      live.stop();
      start();
    }
  });

  $("logout").addEventListener("click", async () => {
    let message;
    try {
      const response = await fetch("/api/logout", { cache: "no-store", headers: authHeader() });
      const data = await response.json();
      message = data.message || data.error;
    } catch (_) {
      message = "Could not reach the dashboard to end the session: it ends by itself after 12 hours unused.";
    }
    login.end(message);
  });

  // ---- the connection ----------------------------------------------------------------------

  const AUTH_CLOSE = (code) => code >= 4400 && code < 4500; // the dashboard refused the credential: log in again

  const live = {
    ws: null,
    nextReq: 1,
    waiting: new Map(),
    backoff: 500,
    stopped: true,
    timer: null,
    start() {
      this.stopped = false;
      this.backoff = 500;
      this.connect();
    },
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close();
      this.dropWaiters();
    },
    connect() {
      if (!login.has()) {
        showLogin("");
        return;
      }
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${proto}//${location.host}/live`);
      this.ws = ws;
      ws.onopen = () => ws.send(JSON.stringify({ op: "auth", ...login.credential() }));
      ws.onmessage = (message) => {
        const msg = JSON.parse(message.data);
        if (msg.type === "session") login.store(msg.session);
        else onMessage(msg);
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) return; // a connection this page already let go
        this.ws = null;
        setConn(false);
        this.dropWaiters();
        if (AUTH_CLOSE(event.code)) {
          login.end(event.reason);
          return;
        }
        checkReachable();
        this.timer = setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 8000);
      };
    },
    connected() {
      this.backoff = 500;
      setConn(true);
      $("logout").hidden = false;
      subscribe();
    },
    dropWaiters() {
      for (const waiter of this.waiting.values()) waiter.reject(new Error("Lost the connection to the dashboard; try again."));
      this.waiting.clear();
    },
    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    },
    request(message) {
      return new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject(new Error("Not connected to the dashboard; it is reconnecting, try again in a moment."));
          return;
        }
        const req = this.nextReq++;
        this.waiting.set(req, { resolve, reject });
        this.send({ ...message, req });
      });
    },
  };

  function setConn(ok) {
    const pill = $("conn");
    pill.textContent = ok ? "live" : "reconnecting…";
    pill.className = `pill ${ok ? "good" : "bad"}`;
  }

  async function checkReachable() {
    try {
      await fetch("/healthz", { cache: "no-store" });
    } catch (_) {
      showBanner("The dashboard is unreachable; reconnecting…");
    }
  }

  function renderPause(pause, costs) {
    const box = $("pause");
    if (pause) {
      const until = pause.until ? ` until ${new Date(pause.until).toISOString().slice(11, 16)} UTC` : "";
      box.textContent = `Paused${until} — ${pause.reason}${pause.until ? "" : " (`ccx resume` to go on)"}`;
    }
    box.hidden = !pause;
    if (costs) {
      const budget = costs.budget_per_day !== undefined ? ` of ${fmtCost(costs.budget_per_day)}` : "";
      $("costs").textContent = `spent ${fmtCost(costs.today)}${budget} today · ${fmtCost(costs.total)} in all`;
    }
  }

  function showBanner(text) {
    $("banner").textContent = text || "";
    $("banner").hidden = !text;
  }

  function subscribe() {
    live.send({ op: "watch" });
    if (state.taskId) live.send({ op: "follow", task: state.taskId });
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "hello":
        $("queue-name").textContent = msg.queue;
        showBanner("");
        live.connected();
        break;
      case "status":
        showBanner(msg.redis ? "" : msg.error || "Redis is unreachable.");
        break;
      case "queue":
        state.queue = msg;
        state.offset = Date.parse(msg.now) - Date.now();
        renderWorker(msg.worker);
        renderPause(msg.pause, msg.costs);
        renderQueue();
        break;
      case "progress":
        state.progress = msg.tasks || {};
        renderProgress();
        break;
      case "task":
        if (msg.record.id === state.taskId) renderTask(msg.record);
        break;
      case "log":
        if (msg.task === state.taskId) {
          output.handle(msg);
          if (msg.progress) {
            state.live = { id: msg.task, ...msg.progress };
            renderProgress();
          }
        }
        break;
      case "missing":
        if (msg.task === state.taskId) renderMissing(msg.message);
        break;
      case "reply": {
        const waiter = live.waiting.get(msg.req);
        live.waiting.delete(msg.req);
        if (waiter) waiter.resolve(msg);
        break;
      }
      case "error":
        if (msg.req && live.waiting.has(msg.req)) {
          live.waiting.get(msg.req).resolve({ ok: false, error: msg.message });
          live.waiting.delete(msg.req);
        } else if (!msg.task || msg.task === state.taskId) {
          $("out-info").textContent = msg.message;
        }
        break;
      default:
        break;
    }
  }

  // ---- navigation ------------------------------------------------------------------------

  function navigate(path) {
    if (path !== location.pathname) history.pushState(null, "", path);
    route();
  }

  function route() {
    const match = location.pathname.match(/^\/tasks\/([^/]+)$/);
    const taskId = match ? decodeURIComponent(match[1]) : null;
    if (state.taskId && state.taskId !== taskId) live.send({ op: "unfollow", task: state.taskId });
    const changed = state.taskId !== taskId;
    state.taskId = taskId;
    const out = !$("login-view").hidden; // logged out: only the login form shows
    $("queue-view").hidden = out || Boolean(taskId);
    $("task-view").hidden = out || !taskId;
    if (!taskId) {
      document.title = "cc-execute dashboard";
      return;
    }
    if (changed) {
      state.record = null;
      resetTaskView(taskId);
      live.send({ op: "follow", task: taskId });
    }
  }

  document.addEventListener("click", (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    if (event.target.closest("button, input, select, textarea, summary")) return;
    const link = event.target.closest("a[data-nav], [data-href]");
    if (!link) return;
    event.preventDefault();
    navigate(link.getAttribute("href") || link.dataset.href);
  });
  window.addEventListener("popstate", route);

  // ---- the queue view ----------------------------------------------------------------------

  function renderWorker(worker) {
    const pill = $("worker");
    pill.textContent = worker ? `worker ${worker}` : "no worker serves this queue";
    pill.className = `pill ${worker ? "good" : "bad"}`;
    pill.title = worker ? "the worker holding the queue's lock" : "start one with `ccx worker` or `ccx up`";
  }

  function cancelButton(row) {
    return h("button", {
      class: "x",
      type: "button",
      title: `Cancel task ${row.id}`,
      "aria-label": `Cancel task ${row.id}`,
      text: "Cancel",
      onclick: () => cancelTask(row.id, row.title),
    });
  }

  function taskRow(row, extra) {
    const href = `/tasks/${encodeURIComponent(row.id)}`;
    return h(
      "li",
      { class: `row ${row.status}`, "data-href": href, "data-task-id": row.id },
      extra.lead,
      h("a", { class: "title", href, "data-nav": "", title: row.title, text: row.title }),
      h("span", { class: "agent", text: row.agent }),
      extra.info,
      ACTIVE.has(row.status) ? cancelButton(row) : h("span"),
    );
  }

  function scheduleRow(entry) {
    const last = entry.last_task
      ? h("a", {
          href: `/tasks/${encodeURIComponent(entry.last_task)}`,
          "data-nav": "",
          class: "last",
          title: entry.last_task,
          text: `last ${entry.last_task.slice(0, 8)}${entry.last_status ? ` (${entry.last_status})` : ""}`,
        })
      : "not run yet";
    return h(
      "li",
      { class: "row schedule", "data-schedule-id": entry.id },
      h("code", { class: "cron", title: "minute hour day month weekday (UTC)", text: entry.cron }),
      h("span", { class: "title", title: entry.title, text: entry.title }),
      h("span", { class: "agent", text: entry.agent }),
      h("span", { class: "when next", "data-until": entry.next_at, "data-prefix": "next run ", text: `next run ${dueText(entry.next_at)}` }),
      h("span", { class: "when" }, last),
    );
  }

  function renderQueue() {
    const q = state.queue;
    if (!q) return;
    $("running").replaceChildren(
      ...q.running.map((row) =>
        taskRow(row, {
          lead: badge("running"),
          info: h(
            "span",
            { class: "when" },
            h("span", { class: "elapsed", "data-since": row.started_at, text: fmtDuration(serverNow() - Date.parse(row.started_at)) }),
            h("span", { class: "prog", "data-progress": row.id, text: progressText(row.id) ? ` · ${progressText(row.id)}` : "" }),
          ),
        }),
      ),
    );
    const queued = q.queued.map((row, index) =>
      taskRow(row, {
        lead: h("span", { class: "pos", text: `#${index + 1}` }),
        info: h("span", { class: "when", text: `waiting ${fmtAgo(row.submitted_at).replace(" ago", "")}` }),
      }),
    );
    if (q.queued_total > q.queued.length) queued.push(h("li", { class: "more", text: `… and ${fmtCount(q.queued_total - q.queued.length)} more` }));
    $("queued").replaceChildren(...queued);
    $("queued-count").textContent = q.queued_total ? `(${fmtCount(q.queued_total)})` : "";
    $("deferred-card").hidden = q.deferred.length === 0;
    $("deferred").replaceChildren(
      ...q.deferred.map((row) =>
        taskRow(row, {
          lead: badge("deferred"),
          info: h(
            "span",
            { class: "when" },
            row.after
              ? h("a", { href: `/tasks/${encodeURIComponent(row.after)}`, "data-nav": "", class: "after", title: row.after, text: `after ${row.after.slice(0, 8)} · ${row.after_title || "(expired)"}${row.after_status ? ` (${row.after_status})` : ""}` })
              : "",
            ` · ${fmtAgo(row.submitted_at)}`,
          ),
        }),
      ),
    );
    $("recent").replaceChildren(
      ...q.recent.map((row) => {
        const result = row.result || {};
        const href = `/tasks/${encodeURIComponent(row.id)}`;
        return h(
          "tr",
          { "data-href": href, "data-task-id": row.id, title: result.error || row.title },
          h("td", {}, badge(row.status)),
          h("td", {}, h("a", { href, "data-nav": "", text: row.title })),
          h("td", { text: row.agent }),
          h("td", { text: fmtAgo(row.ended_at) }),
          h("td", { text: fmtDuration(result.duration_ms) }),
          h("td", { class: result.success ? "" : "err", text: exitText(result) }),
          h("td", { text: fmtCost(result.cost_usd) }),
        );
      }),
    );
    const scheduled = (q.scheduled || []).map((row) =>
      taskRow(row, {
        lead: badge("scheduled"),
        info: h("span", { class: "when", "data-until": row.scheduled_for, text: dueText(row.scheduled_for) }),
      }),
    );
    const scheduledTotal = q.scheduled_total || scheduled.length;
    if (scheduledTotal > scheduled.length) scheduled.push(h("li", { class: "more", text: `… and ${fmtCount(scheduledTotal - scheduled.length)} more` }));
    $("scheduled-card").hidden = scheduled.length === 0;
    $("scheduled").replaceChildren(...scheduled);
    $("scheduled-count").textContent = scheduled.length ? `(${fmtCount(scheduledTotal)})` : "";
    const schedules = q.schedules || [];
    $("schedules-card").hidden = schedules.length === 0;
    $("schedules").replaceChildren(...schedules.map(scheduleRow));
    if (state.flash) {
      const fresh = document.querySelector(`#queue-view [data-task-id="${CSS.escape(state.flash)}"]`);
      if (fresh) {
        fresh.classList.add("flash");
        state.flash = null;
      }
    }
    if (state.record && state.queue) renderFacts();
  }

  function renderProgress() {
    for (const node of document.querySelectorAll("[data-progress]")) {
      const text = progressText(node.dataset.progress);
      node.textContent = text ? ` · ${text}` : "";
    }
    if (state.record && state.record.status === "running") renderFacts();
  }

  // Ticking clocks are only display: every number comes from the server.
  setInterval(() => {
    for (const node of document.querySelectorAll("[data-since]")) {
      node.textContent = fmtDuration(serverNow() - Date.parse(node.dataset.since));
    }
    for (const node of document.querySelectorAll("[data-until]")) {
      node.textContent = `${node.dataset.prefix || ""}${dueText(node.dataset.until)}`;
    }
  }, 1000);

  async function cancelTask(id, title) {
    if (!window.confirm(`Cancel task ${id}?\n\n${title || ""}`)) return;
    const msgBox = $("cancel-msg");
    try {
      const reply = await live.request({ op: "cancel", task: id });
      if (state.taskId === id) {
        msgBox.textContent = reply.ok ? reply.message : reply.error;
        msgBox.hidden = false;
      } else if (!reply.ok) {
        window.alert(reply.error);
      }
    } catch (error) {
      if (state.taskId === id) {
        msgBox.textContent = error.message;
        msgBox.hidden = false;
      }
    }
  }

  // ---- the submit form ---------------------------------------------------------------------

  function syncForm() {
    const command = $("f-agent").value === "command";
    for (const node of document.querySelectorAll(".for-command")) node.hidden = !command;
    for (const node of document.querySelectorAll(".for-agent")) node.hidden = command;
  }
  $("f-agent").addEventListener("change", syncForm);

  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const errorBox = $("submit-error");
    const okBox = $("submit-ok");
    errorBox.hidden = true;
    okBox.hidden = true;
    const agent = $("f-agent").value;
    const form = { agent, timeout: $("f-timeout").value };
    if (agent === "command") form.argv = $("f-argv").value;
    else Object.assign(form, { task: $("f-task").value, tools: $("f-tools").value });
    $("f-submit").disabled = true;
    try {
      const reply = await live.request({ op: "submit", form });
      if (reply.ok) {
        state.flash = reply.id;
        okBox.replaceChildren("Submitted ", h("a", { href: `/tasks/${reply.id}`, "data-nav": "", text: `task ${reply.id.slice(0, 8)}` }), ".");
        okBox.hidden = false;
        $("f-task").value = "";
      } else {
        errorBox.textContent = reply.error;
        errorBox.hidden = false;
      }
    } catch (error) {
      errorBox.textContent = error.message;
      errorBox.hidden = false;
    } finally {
      $("f-submit").disabled = false;
    }
  });

  // ---- the task page -----------------------------------------------------------------------

  function resetTaskView(taskId) {
    $("task-title").textContent = "Loading…";
    const status = $("task-status");
    status.className = "badge";
    status.textContent = "…";
    $("cancel").hidden = true;
    $("cancel-msg").hidden = true;
    $("task-facts").replaceChildren();
    $("result-card").hidden = true;
    $("spec").textContent = "";
    $("spec-what").textContent = "";
    $("spec-facts").replaceChildren();
    output.open(taskId);
  }

  function renderMissing(message) {
    // Only the message: no output box, no spec, no facts for a task that does not exist.
    $("task-title").textContent = message;
    $("task-status").textContent = "unknown";
    $("task-status").className = "badge unknown";
    $("task-facts").replaceChildren();
    $("cancel").hidden = true;
    for (const id of ["output-card", "result-card", "spec-card"]) $(id).hidden = true;
  }

  function fact(label, value, attrs = {}) {
    return h("div", {}, h("dt", { text: label }), h("dd", attrs, value));
  }

  function renderFacts() {
    const r = state.record;
    const result = r.result;
    const items = [fact("Task id", h("code", { text: r.id })), fact("Agent", r.spec.agent), fact("Submitted", fmtTime(r.submitted_at))];
    if (r.status === "scheduled" && r.scheduled_for) items.push(fact("Due", dueText(r.scheduled_for), { "data-until": r.scheduled_for }));
    else if (r.scheduled_for) items.push(fact("Scheduled for", fmtTime(r.scheduled_for)));
    if (r.started_at) items.push(fact("Started", fmtTime(r.started_at)));
    if (r.status === "running" && r.started_at) {
      items.push(fact("Elapsed", fmtDuration(serverNow() - Date.parse(r.started_at)), { "data-since": r.started_at }));
      items.push(fact("Progress", progressText(r.id) || "—"));
    }
    if (r.status === "queued" && state.queue) {
      const index = state.queue.queued.findIndex((row) => row.id === r.id);
      if (index >= 0) items.push(fact("Position", `#${index + 1} in line`));
    }
    if (r.ended_at) items.push(fact("Ended", fmtTime(r.ended_at)));
    if (result) {
      items.push(fact("Duration", fmtDuration(result.duration_ms)));
      items.push(fact("Exit", exitText(result)));
      const cost = result.agent && result.agent.total_cost_usd;
      if (typeof cost === "number") items.push(fact("Cost", fmtCost(cost)));
    }
    $("task-facts").replaceChildren(...items);
  }

  function renderTask(record) {
    state.record = record;
    $("output-card").hidden = false;
    $("spec-card").hidden = false;
    const title = specTitle(record.spec);
    document.title = `${record.status} · ${title.slice(0, 60)} · cc-execute`;
    $("task-title").textContent = title;
    const status = $("task-status");
    status.className = `badge ${record.status}`;
    status.textContent = record.status;
    const cancel = $("cancel");
    cancel.hidden = !ACTIVE.has(record.status);
    cancel.onclick = () => cancelTask(record.id, title);
    renderFacts();
    output.setTranscript(Boolean(record.transcript));
    if (!record.result && record.status !== "running") output.pre.dataset.empty = "Waiting for the task to start…";
    else if (!record.result) output.pre.dataset.empty = "Waiting for output…";
    else output.pre.dataset.empty = "No output.";
    renderSpec(record.spec);
    renderResult(record.result);
  }

  function renderSpec(spec) {
    const items = [];
    for (const [key, value] of Object.entries(spec)) {
      if (key === "task" || key === "argv" || value === null || value === "") continue;
      if (Array.isArray(value) && value.length === 0) continue;
      if (typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 0) continue;
      let text = Array.isArray(value) ? value.join(", ") : typeof value === "object" ? JSON.stringify(value) : String(value);
      if (key === "env") text = `${Object.keys(value).join(", ")} (values hidden)`;
      items.push(fact(key, text));
    }
    $("spec-facts").replaceChildren(...items);
    const command = spec.agent === "command";
    $("spec-what").textContent = command ? JSON.stringify(spec.argv || []) : spec.task || "";
    $("spec-what-label").textContent = command ? "argv" : "task";
    $("spec").textContent = JSON.stringify(spec, null, 2);
  }

  function renderResult(result) {
    $("result-card").hidden = !result;
    if (!result) return;
    const items = [
      fact("Outcome", badge(result.success ? "finished" : result.cancelled ? "cancelled" : "failed")),
      fact("Exit", exitText(result)),
      fact("Duration", fmtDuration(result.duration_ms)),
    ];
    const agent = result.agent || {};
    if (typeof agent.total_cost_usd === "number") items.push(fact("Cost", fmtCost(agent.total_cost_usd)));
    if (agent.num_turns) items.push(fact("Turns", String(agent.num_turns)));
    if (agent.model) items.push(fact("Model", agent.model));
    if (agent.session_id) items.push(fact("Session", h("code", { text: agent.session_id })));
    if (result.output_clipped) items.push(fact("Output", `last 64 KiB of ${fmtCount(result.output_clipped)} characters`));
    $("result-facts").replaceChildren(...items);
    $("result-error").textContent = result.error || "";
    $("result-error").hidden = !result.error;
    $("result-output").textContent = result.output || "";
    $("result-stderr").textContent = result.stderr || "";
    $("stderr-box").hidden = !result.stderr;
  }

  // ---- the output window -------------------------------------------------------------------
  // A contiguous window of the log, as chunks (each one DOM node). Following the tail, old
  // chunks are dropped from the top; after "load older" fills the window, the newest are
  // dropped instead and live output pauses until "Jump to latest".

  const output = {
    scroll: $("output-scroll"),
    pre: $("output"),
    chunks: [],
    chars: 0,
    taskId: null,
    mode: "raw",
    transcript: false,
    follow: true,
    detached: false,
    moreBefore: false,
    loading: false,
    note: "",

    open(taskId) {
      this.taskId = taskId;
      this.transcript = false;
      this.mode = "raw";
      this.clear();
      this.pre.dataset.empty = "Loading…";
      $("mode").hidden = true;
    },

    clear() {
      this.chunks = [];
      this.chars = 0;
      this.pre.replaceChildren();
      this.detached = false;
      this.moreBefore = false;
      this.follow = true;
      this.note = "";
      this.info();
    },

    setTranscript(transcript) {
      if (transcript === this.transcript) return;
      this.transcript = transcript;
      $("mode").hidden = !transcript;
      this.setMode(transcript ? "transcript" : "raw");
    },

    setMode(mode) {
      this.mode = mode;
      for (const button of $("mode").querySelectorAll("button")) button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
      for (const chunk of this.chunks) {
        const node = this.node(chunk);
        chunk.node.replaceWith(node);
        chunk.node = node;
      }
      if (this.follow) this.toBottom();
    },

    node(chunk) {
      const parts = this.mode === "transcript" && chunk.lines ? chunk.lines : chunk.parts;
      const span = h("span", { class: "chunk" });
      for (const [kind, text] of parts) span.append(kind === "out" ? text : h("span", { class: kind, text }));
      return span;
    },

    atBottom() {
      return this.scroll.scrollHeight - this.scroll.scrollTop - this.scroll.clientHeight < 40;
    },

    toBottom() {
      this.scroll.scrollTop = this.scroll.scrollHeight;
    },

    handle(msg) {
      if (msg.mode === "reset") {
        this.clear();
        this.moreBefore = Boolean(msg.more_before);
        if (msg.skipped_frames) this.note = `skipped ${fmtCount(msg.skipped_frames)} frames to keep up`;
        if (msg.expired) this.pre.dataset.empty = "The log has expired; the result is below.";
        this.append(msg.chunks);
        this.toBottom();
        return;
      }
      if (this.detached) return;
      this.append(msg.chunks);
    },

    append(chunks) {
      const incoming = chunks.reduce((sum, chunk) => sum + chunk.chars, 0);
      const stick = this.follow || this.atBottom();
      if (!stick && this.chars + incoming > MAX_CHARS) {
        // The reader is looking at older text: keep it where it is and stop adding.
        this.detached = true;
        this.info();
        return;
      }
      const fragment = document.createDocumentFragment();
      for (const chunk of chunks) {
        chunk.node = this.node(chunk);
        fragment.append(chunk.node);
        this.chunks.push(chunk);
        this.chars += chunk.chars;
      }
      this.pre.append(fragment);
      while (this.chars > MAX_CHARS && this.chunks.length > 1) {
        const dropped = this.chunks.shift();
        dropped.node.remove();
        this.chars -= dropped.chars;
        this.moreBefore = true;
      }
      if (stick) this.toBottom();
      this.info();
    },

    async loadOlder() {
      if (this.loading || !this.taskId) return;
      this.loading = true;
      $("load-older").disabled = true;
      const taskId = this.taskId;
      const head = this.chunks.length ? this.chunks[0] : null;
      try {
        const where = head ? `?before=${encodeURIComponent(head.first)}&offset=${head.offset || 0}` : "";
        const url = `/api/tasks/${encodeURIComponent(taskId)}/log${where}`;
        const data = await api(url);
        if (taskId !== this.taskId) return;
        const fragment = document.createDocumentFragment();
        for (const chunk of data.chunks) {
          chunk.node = this.node(chunk);
          fragment.append(chunk.node);
          this.chars += chunk.chars;
        }
        const height = this.scroll.scrollHeight;
        const top = this.scroll.scrollTop;
        this.pre.prepend(fragment);
        this.scroll.scrollTop = top + (this.scroll.scrollHeight - height);
        this.chunks = data.chunks.concat(this.chunks);
        this.moreBefore = data.more_before;
        while (this.chars > MAX_CHARS && this.chunks.length > data.chunks.length) {
          const dropped = this.chunks.pop();
          dropped.node.remove();
          this.chars -= dropped.chars;
          this.detached = true;
        }
        this.follow = this.atBottom();
      } catch (error) {
        this.note = `could not load older output: ${error.message}`;
      } finally {
        this.loading = false;
        $("load-older").disabled = false;
        this.info();
      }
    },

    info() {
      const parts = [];
      if (this.chars) parts.push(`${fmtBytes(this.chars)} shown`);
      if (this.moreBefore) parts.push("older output above");
      if (this.note) parts.push(this.note);
      $("out-info").textContent = parts.join(" · ");
      $("load-older").hidden = !this.moreBefore;
      $("detached").hidden = !this.detached;
    },
  };

  output.scroll.addEventListener("scroll", () => {
    output.follow = output.atBottom();
  });
  $("load-older").addEventListener("click", () => output.loadOlder());
  $("jump").addEventListener("click", () => {
    output.detached = false;
    output.info();
    if (state.taskId) live.send({ op: "follow", task: state.taskId });
  });
  for (const button of $("mode").querySelectorAll("button")) {
    button.addEventListener("click", () => output.setMode(button.dataset.mode));
  }

  // ---- start -------------------------------------------------------------------------------

  syncForm();
  login.takeFragment();
  start();
})();
