// Viberglass: the little script the pages use beside htmx. Every page reads
// fine without it; it adds live logs, dialogs and line picking.
(function () {
  "use strict";

  // Live logs: <pre class="log" data-events="/api/v1/jobs/{id}/events/stream">
  // follows the job's events over Server-Sent Events. With data-reload-on-end
  // the page reloads when the job finishes, to show what it produced.
  function follow(pre) {
    if (pre.dataset.following) return;
    pre.dataset.following = "yes";
    const source = new EventSource(pre.dataset.events);
    const append = (kind) => (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      const line = document.createElement("span");
      line.className = "line " + kind + " " + (event.level || "");
      const time = (event.created_at || "").slice(11, 19);
      line.textContent = time + "  " + event.message;
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
      pre.appendChild(line);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      const step = document.querySelector("[data-progress-for='" + pre.id + "']");
      if (step && kind === "progress") step.textContent = event.message;
    };
    for (const kind of ["progress", "log", "agent", "status"]) {
      source.addEventListener(kind, append(kind));
    }
    source.addEventListener("end", () => {
      source.close();
      pre.dataset.ended = "yes";
      if (pre.dataset.reloadOnEnd !== undefined) setTimeout(() => window.location.reload(), 400);
    });
  }

  function init(root) {
    root.querySelectorAll("pre[data-events]").forEach(follow);
    const once = (el) => {
      if (el.dataset.vgReady) return false;
      el.dataset.vgReady = "yes";
      return true;
    };
    root.querySelectorAll("[data-open-dialog]").forEach((button) => {
      if (!once(button)) return;
      button.addEventListener("click", (e) => {
        e.preventDefault();
        const dialog = document.getElementById(button.dataset.openDialog);
        if (dialog) dialog.showModal();
      });
    });
    root.querySelectorAll("[data-close-dialog]").forEach((button) => {
      if (!once(button)) return;
      button.addEventListener("click", (e) => {
        e.preventDefault();
        button.closest("dialog").close();
      });
    });
    // Clicking a document line picks it for a new comment.
    root.querySelectorAll(".doc li[data-line]").forEach((li) => {
      if (!once(li)) return;
      li.addEventListener("click", () => {
        const form = document.getElementById(li.closest(".doc").dataset.commentForm);
        if (!form) return;
        form.querySelector("input[name='line:int']").value = li.dataset.line;
        form.querySelector("textarea[name='body']").focus();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => init(document));
  document.addEventListener("htmx:load", (e) => init(e.target));
})();
