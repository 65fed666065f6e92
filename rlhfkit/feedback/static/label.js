// Labeling page: keyboard shortcuts, client-side timer, a check before submitting.
// Plain JS, no build step. Shortcuts: A / B / T (tie, both good) / X (both bad), 1-4 strength,
// Enter submit, S skip, G guidelines. They are off while typing in the rationale (Esc leaves it).
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  var guidelines = document.getElementById("guidelines");
  if (!form) {
    document.addEventListener("keydown", function (e) {
      if ((e.key === "g" || e.key === "G") && guidelines && !isTyping(e.target)) guidelines.open = !guidelines.open;
    });
    return;
  }
  var kind = form.dataset.kind;
  var secondsField = document.getElementById("seconds");
  var clientError = document.getElementById("client-error");
  var submitBtn = document.getElementById("submit");
  var skipBtn = document.getElementById("skip");

  // Time on task counts only while the tab is visible: a task left open over lunch should not
  // look like a 40-minute judgement in the per-annotator statistics.
  var active = 0;
  var since = document.hidden ? null : performance.now();
  document.addEventListener("visibilitychange", function () {
    if (document.hidden && since !== null) { active += performance.now() - since; since = null; }
    else if (!document.hidden && since === null) { since = performance.now(); }
  });
  function elapsedSeconds() {
    var total = active + (since === null ? 0 : performance.now() - since);
    return (total / 1000).toFixed(2);
  }

  function isTyping(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable ||
      (tag === "INPUT" && !/^(radio|checkbox|button|submit|hidden)$/i.test(el.type));
  }

  function check(id) {
    var el = document.getElementById(id);
    if (el) { el.checked = true; el.dispatchEvent(new Event("change", { bubbles: true })); }
  }

  function showError(msg) {
    clientError.textContent = msg;
    clientError.hidden = !msg;
  }

  var submitting = false;
  form.addEventListener("submit", function (e) {
    var action = e.submitter ? e.submitter.value : "submit";
    if (submitting) { e.preventDefault(); return; }  // one post per task, however often Enter is hit
    if (action === "submit") {
      if (kind === "pair" && !form.querySelector('input[name="choice"]:checked')) {
        e.preventDefault(); showError("Pick A, B, T (tie, both good) or X (both bad) first."); return;
      }
      if (kind !== "pair") {
        var selects = form.querySelectorAll("select[name^=rank_]");
        for (var i = 0; i < selects.length; i++) {
          if (!selects[i].value) { e.preventDefault(); showError("Give every response a rank."); return; }
        }
      }
    }
    secondsField.value = elapsedSeconds();
    submitting = true;
  });

  function submitWith(btn) {
    if (form.requestSubmit) form.requestSubmit(btn); else btn.click();
  }

  var choiceKeys = { a: "choice-A", b: "choice-B", t: "choice-tie_good", x: "choice-tie_bad" };
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Enter" && e.target && e.target.tagName === "SELECT") {
      e.preventDefault(); submitWith(submitBtn); return;  // rank chosen with digits, Enter submits
    }
    if (isTyping(e.target)) {
      if (e.key === "Escape") e.target.blur();
      return;  // letters typed in the rationale are text, not shortcuts
    }
    var k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (k === "Enter" && e.target && e.target.tagName === "BUTTON") return;  // the focused button acts
    if (kind === "pair" && choiceKeys[k]) { check(choiceKeys[k]); showError(""); e.preventDefault(); }
    else if (kind === "pair" && /^[1-4]$/.test(k)) { check("strength-" + k); e.preventDefault(); }
    else if (k === "Enter") { e.preventDefault(); submitWith(submitBtn); }
    else if (k === "s") { e.preventDefault(); submitWith(skipBtn); }
    else if (k === "g" && guidelines) { guidelines.open = !guidelines.open; e.preventDefault(); }
  });
})();
