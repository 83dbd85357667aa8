// The call-link page without reloads: press the button by fetch, then poll the call's state until it ends.
(function () {
  "use strict";
  // Times in the phone's own zone: the server writes them as ISO 8601 in <time datetime>, shown here locally.
  var times = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < times.length; i++) {
    var at = new Date(times[i].getAttribute("datetime"));
    if (!isNaN(at.getTime())) {
      times[i].textContent = at.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    }
  }
  var form = document.getElementById("call-form");
  var state = document.getElementById("call-state");
  var button = document.getElementById("call-button");
  if (!form || !state || !button) { return; }
  var statusUrl = form.getAttribute("action") + "/status";
  var timer = null;

  function show(data) {
    state.setAttribute("data-state", data.state);
    state.textContent = data.label;
    var left = document.getElementById("uses-left");
    if (left && typeof data.uses_left === "number") { left.textContent = String(data.uses_left); }
    var usedUp = data.uses_left === 0;
    var why = document.getElementById("why-disabled");
    if (why) { why.hidden = !usedUp; }
    button.disabled = data.state === "ringing" || usedUp;
    if (data.state === "ringing") { poll(); } else { timer = null; }
  }

  function poll() {
    if (timer) { return; }
    timer = setTimeout(function () {
      timer = null;
      fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 410 || r.status === 404) {
            return { state: "unknown", label: "This link has expired; ask for a new one.", uses_left: 0 };
          }
          return r.ok ? r.json() : null;
        })
        .then(function (data) { if (data) { show(data); } else { poll(); } })
        .catch(function () { poll(); });
    }, 1500);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    var old = document.getElementById("call-error");
    if (old) { old.remove(); }
    fetch(form.getAttribute("action"), {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      credentials: "same-origin",
      body: "{}"
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (result) {
      if (result.ok) {
        show({ state: "ringing", label: "Ringing… pick up your phone", uses_left: null });
      } else {
        var p = document.createElement("p");
        p.className = "error";
        p.id = "call-error";
        p.setAttribute("role", "alert");
        p.textContent = result.body.detail || "The call could not be placed.";
        form.parentNode.insertBefore(p, form);
        button.disabled = false;
        if (result.body.code === "link_expired") { button.disabled = true; }
      }
    }).catch(function () { button.disabled = false; });
  });

  if (state.getAttribute("data-state") === "ringing") { button.disabled = true; poll(); }
})();
