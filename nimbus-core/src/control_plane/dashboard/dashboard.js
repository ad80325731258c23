// The dashboard's only script (served from /dashboard/assets/dashboard.js; the
// page's Content-Security-Policy allows no other). It submits the metadata-key
// picker when a key is chosen and follows a job's live log over Server-Sent
// Events from /dashboard/jobs/{id}/log.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }

  const log = document.getElementById("live-log");
  if (!log) return;
  const state = document.getElementById("live-log-state");
  const say = (text) => { if (state) state.textContent = text; };
  const source = new EventSource(log.dataset.src);
  source.addEventListener("open", () => say("following"));
  source.addEventListener("line", (event) => {
    const line = JSON.parse(event.data);
    const row = document.createElement("div");
    row.className = "log-line level-" + String(line.level || "info").replace(/[^a-z]/g, "");
    row.textContent = line.message;
    log.appendChild(row);
  });
  source.addEventListener("end", (event) => {
    say("ended: " + (JSON.parse(event.data).reason || "done"));
    source.close();
  });
  source.addEventListener("error", () => say("reconnecting…"));
});
