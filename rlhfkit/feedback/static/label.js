// Labeling page: keyboard shortcuts, client-side timer, a check before submitting, the ranking list.
// Plain JS, no build step. Shortcuts: A / B / T (tie, both good) / X (both bad), 1-4 strength,
// Enter submit, S skip, G guidelines, D side-by-side diff, U revise the last judgement. They are off
// while typing in the rationale (Esc leaves it). Rankings: the list of responses has the focus on
// load; Up/Down move it, a digit sets the focused response's rank, Shift+Up/Down moves the response
// in the list and dragging reorders it (both then rank by list order). The rank selects stay the
// form's fields, so the page also works by mouse and without this script.
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  var guidelines = document.getElementById("guidelines");
  var reviseLink = document.getElementById("revise-link");

  function isTyping(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable ||
      (tag === "INPUT" && !/^(radio|checkbox|button|submit|hidden)$/i.test(el.type));
  }

  function pageKeys(e, k) {
    // Keys that work on every labelling page, with or without a task.
    if (k === "g" && guidelines) { guidelines.open = !guidelines.open; return true; }
    if (k === "u" && reviseLink) { window.location.href = reviseLink.href; return true; }
    return false;
  }

  if (!form) {
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || isTyping(e.target)) return;
      if (pageKeys(e, e.key.length === 1 ? e.key.toLowerCase() : e.key)) e.preventDefault();
    });
    return;
  }
  var kind = form.dataset.kind;
  var secondsField = document.getElementById("seconds");
  var clientError = document.getElementById("client-error");
  var submitBtn = document.getElementById("submit");
  var skipBtn = document.getElementById("skip");
  var diffBtn = document.getElementById("diff-toggle");
  var diffTable = document.getElementById("diff");
  var rankList = document.getElementById("ranklist");

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

  function check(id) {
    var el = document.getElementById(id);
    if (el) { el.checked = true; el.dispatchEvent(new Event("change", { bubbles: true })); }
  }

  function showError(msg) {
    clientError.textContent = msg;
    clientError.hidden = !msg;
  }

  function toggleDiff() {
    if (!diffTable) return;
    diffTable.hidden = !diffTable.hidden;
    diffBtn.setAttribute("aria-pressed", diffTable.hidden ? "false" : "true");
    document.getElementById("responses").classList.toggle("diffing", !diffTable.hidden);
  }
  if (diffBtn) diffBtn.addEventListener("click", toggleDiff);

  // ---------------------------------------------------------------- ranking list
  function items() { return rankList ? Array.prototype.slice.call(rankList.children) : []; }
  function selectOf(li) { return document.getElementById("rank-" + li.dataset.letter); }
  function showRanks() {
    items().forEach(function (li) {
      var v = selectOf(li).value;
      document.getElementById("rankno-" + li.dataset.letter).textContent = v || "–";
      li.classList.toggle("ranked", !!v);
    });
  }
  function rankByOrder() {
    items().forEach(function (li, k) { selectOf(li).value = String(k + 1); });
    showRanks();
  }
  function highlight(li) {
    document.querySelectorAll(".response.current").forEach(function (el) { el.classList.remove("current"); });
    var card = document.getElementById("response-" + li.dataset.letter);
    if (card) card.classList.add("current");
  }
  function focusItem(k, preventScroll) {
    var all = items();
    if (!all.length) return;
    var li = all[Math.max(0, Math.min(all.length - 1, k))];
    li.focus({ preventScroll: !!preventScroll });
  }
  function rankKey(e, k) {
    // Keys of the ranking list; true when handled.
    var li = e.target && e.target.parentNode === rankList ? e.target : null;
    if (!li) return false;
    var all = items(), at = all.indexOf(li);
    if ((k === "ArrowUp" || k === "ArrowDown") && e.shiftKey) {
      var to = at + (k === "ArrowUp" ? -1 : 1);
      if (to < 0 || to >= all.length) return true;
      if (k === "ArrowUp") rankList.insertBefore(li, all[to]); else rankList.insertBefore(all[to], li);
      rankByOrder();
      li.focus();
      return true;
    }
    if (k === "ArrowUp" || k === "ArrowDown") { focusItem(at + (k === "ArrowUp" ? -1 : 1)); return true; }
    if (/^[1-9]$/.test(k) && Number(k) <= all.length) {
      selectOf(li).value = k;
      showRanks();
      showError("");
      focusItem(at + 1);
      return true;
    }
    return false;
  }
  if (rankList) {
    var dragged = null;
    items().forEach(function (li) {
      li.addEventListener("focus", function () { highlight(li); });
      li.addEventListener("dragstart", function (e) {
        dragged = li; li.classList.add("dragging");
        e.dataTransfer.effectAllowed = "move";
        e.dataTransfer.setData("text/plain", li.dataset.letter);
      });
      li.addEventListener("dragend", function () { li.classList.remove("dragging"); dragged = null; });
      li.addEventListener("dragover", function (e) {
        if (!dragged || dragged === li) return;
        e.preventDefault();
        var box = li.getBoundingClientRect();
        rankList.insertBefore(dragged, e.clientY < box.top + box.height / 2 ? li : li.nextSibling);
      });
      li.addEventListener("drop", function (e) { e.preventDefault(); rankByOrder(); });
    });
    form.querySelectorAll("select[name^=rank_]").forEach(function (sel) {
      sel.addEventListener("change", showRanks);
    });
    showRanks();
    focusItem(0, true);  // keyboard-first: ranking starts without a single Tab (the page stays at the top)
  }

  // ---------------------------------------------------------------- submitting
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
    if (!btn) return;
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
    if (k === "Enter" && e.target && (e.target.tagName === "BUTTON" || e.target.tagName === "A")) return;
    if (kind !== "pair" && rankKey(e, k)) { e.preventDefault(); return; }
    if (kind === "pair" && choiceKeys[k]) { check(choiceKeys[k]); showError(""); e.preventDefault(); }
    else if (kind === "pair" && /^[1-4]$/.test(k)) { check("strength-" + k); e.preventDefault(); }
    else if (k === "Enter") { e.preventDefault(); submitWith(submitBtn); }
    else if (k === "s" && skipBtn) { e.preventDefault(); submitWith(skipBtn); }
    else if (k === "d" && diffTable) { e.preventDefault(); toggleDiff(); }
    else if (pageKeys(e, k)) { e.preventDefault(); }
  });
})();
