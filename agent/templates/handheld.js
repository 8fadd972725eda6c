// The handheld page's only script: keeps the link banner current and lets the
// recipient sign on the canvas. The page works without it, minus the signature.
(function () {
  "use strict";
  var banner = document.getElementById("link");
  function refresh() {
    fetch("/status", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s) { return; }
        banner.textContent = s.banner.text;
        banner.className = "banner " + s.banner.class;
      })
      .catch(function () { /* the daemon is restarting: try again next time */ });
  }
  setInterval(refresh, 2000);

  var canvas = document.getElementById("signature-pad");
  if (!canvas) { return; }
  var field = document.getElementById("signature");
  var pen = canvas.getContext("2d");
  var drawing = false;
  var drawn = false;
  function reset() {
    pen.fillStyle = "#fff";
    pen.fillRect(0, 0, canvas.width, canvas.height);
    pen.lineWidth = 3;
    pen.lineCap = "round";
    pen.lineJoin = "round";
    pen.strokeStyle = "#111";
  }
  reset();
  if (field.value) {
    // A form sent back with an error keeps what was drawn.
    var previous = new Image();
    previous.onload = function () { pen.drawImage(previous, 0, 0); };
    previous.src = field.value;
    drawn = true;
  }
  function at(event) {
    var box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  }
  canvas.addEventListener("pointerdown", function (event) {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    var p = at(event);
    pen.beginPath();
    pen.moveTo(p[0], p[1]);
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!drawing) { return; }
    var p = at(event);
    pen.lineTo(p[0], p[1]);
    pen.stroke();
    drawn = true;
  });
  function finish() {
    if (drawing && drawn) { field.value = canvas.toDataURL("image/png"); }
    drawing = false;
  }
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  document.getElementById("clear-signature").addEventListener("click", function () {
    reset();
    field.value = "";
    drawn = false;
  });
  document.getElementById("confirm-form").addEventListener("submit", function () {
    if (drawn) { field.value = canvas.toDataURL("image/png"); }
  });
})();
