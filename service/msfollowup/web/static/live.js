// Scanner-room page: one panel per scanner, kept current by the server-sent event stream.
// Built with textContent only (no innerHTML): series descriptions come from the modality.
"use strict";

(function () {
  const main = document.getElementById("panels");
  const status = document.getElementById("connection");
  const streamUrl = document.body.dataset.stream;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function list(title, cls, items, render) {
    const frag = document.createDocumentFragment();
    if (!items || !items.length) return frag;
    frag.appendChild(el("h3", null, title));
    const ul = el("ul", cls);
    for (const it of items) ul.appendChild(render(it));
    frag.appendChild(ul);
    return frag;
  }

  function render(p) {
    const s = el("section", "panel");
    s.dataset.scanner = p.scanner;
    s.dataset.study = p.study_instance_uid;
    if (p.missing.length) s.classList.add("has-missing");
    if (p.failing.length) s.classList.add("has-failing");
    const h = el("h2", null, p.scanner);
    if (p.station_name && p.station_name !== p.scanner) { h.appendChild(document.createTextNode(" ")); h.appendChild(el("small", null, p.station_name)); }
    s.appendChild(h);
    const who = (p.patient_name || p.patient_initials || "") + " · Acc " + (p.accession_number || "–") + (p.complete ? " · complete" : "");
    s.appendChild(el("p", "who", who));
    const prof = el("p", "profile", "Expected: " + p.profile.label + " ");
    prof.appendChild(el("small", null, "(" + p.profile.source + ")"));
    s.appendChild(prof);
    s.appendChild(list("Timers", "timers", p.timers, (t) => {
      const li = el("li", "timer", t.message + " ");
      li.dataset.epoch = String(t.not_before_epoch_ms);
      li.appendChild(el("span", "countdown"));
      return li;
    }));
    s.appendChild(list("Missing", "missing", p.missing, (m) => el("li", null, m.message)));
    s.appendChild(list("Failing", "failing", p.failing, (m) => el("li", null, m.message)));
    s.appendChild(list("Cannot tell yet", "uncertain", p.uncertain, (m) => el("li", null, m.message)));
    s.appendChild(el("h3", null, "Received"));
    const ul = el("ul", "series");
    for (const x of p.series) {
      const desc = [x.series_number, x.description || "", "—", x.kind, x.acquisition || "", x.contrast || ""].join(" ").replace(/\s+/g, " ");
      ul.appendChild(el("li", null, desc + " (" + x.instance_count + ")"));
    }
    for (const x of p.receiving) ul.appendChild(el("li", "receiving", x.series_number + " " + (x.description || "") + " — receiving (" + x.instances + ")"));
    s.appendChild(ul);
    return s;
  }

  function upsert(p) {
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    const fresh = render(p);
    for (const old of main.querySelectorAll("section.panel")) {
      if (old.dataset.scanner === p.scanner) { main.replaceChild(fresh, old); tick(); return; }
    }
    main.appendChild(fresh);
    tick();
  }

  function tick() {
    const now = Date.now();
    for (const li of document.querySelectorAll("li.timer")) {
      const left = Math.round((Number(li.dataset.epoch) - now) / 1000);
      const span = li.querySelector(".countdown");
      if (!span) continue;
      if (left <= 0) { span.textContent = "— ready"; continue; }
      const m = Math.floor(left / 60), sec = left % 60;
      span.textContent = "— wait " + m + ":" + String(sec).padStart(2, "0");
    }
  }

  const es = new EventSource(streamUrl);
  es.addEventListener("open", () => { status.textContent = "live"; status.classList.add("live"); });
  es.addEventListener("error", () => { status.textContent = "reconnecting…"; status.classList.remove("live"); });
  es.addEventListener("provisional", (e) => upsert(JSON.parse(e.data)));
  setInterval(tick, 1000);
  tick();
})();
