// The handheld page's only script, served from the page's own origin (its
// content security policy allows no other, and no inline script): keeps the
// link banner current, lets the recipient sign on the canvas, downscales a
// photo before it is sent, and asks the browser where the handheld is. The
// page works without it, minus the signature, the photo and the position.
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

  signaturePad();
  photos();
  positions();

  function signaturePad() {
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
  }

  // A camera's photo is megabytes; the handheld keeps and uploads a JPEG of
  // at most this many pixels on its long side, which still shows a door, a
  // parcel and a house number plainly.
  var LONG_SIDE = 1600;
  var QUALITY = 0.85;

  // Reads the file as a data: URL (the policy allows images from data: URLs,
  // not blob: ones), draws it scaled down on a canvas, and hands back the
  // canvas as a JPEG data: URL.
  function downscale(file, done, failed) {
    var reader = new FileReader();
    reader.onerror = failed;
    reader.onload = function () {
      var image = new Image();
      image.onerror = failed;
      image.onload = function () {
        var width = image.naturalWidth;
        var height = image.naturalHeight;
        if (!width || !height) { failed(); return; }
        var scale = Math.min(1, LONG_SIDE / Math.max(width, height));
        var canvas = document.createElement("canvas");
        canvas.width = Math.max(1, Math.round(width * scale));
        canvas.height = Math.max(1, Math.round(height * scale));
        var pen = canvas.getContext("2d");
        // JPEG has no transparency: a see-through PNG lands on white, not black.
        pen.fillStyle = "#fff";
        pen.fillRect(0, 0, canvas.width, canvas.height);
        pen.drawImage(image, 0, 0, canvas.width, canvas.height);
        done(canvas.toDataURL("image/jpeg", QUALITY));
      };
      image.src = reader.result;
    };
    reader.readAsDataURL(file);
  }

  function photos() {
    Array.prototype.forEach.call(document.querySelectorAll(".photo-pick"), function (pick) {
      var form = pick.form;
      var field = form.querySelector("input.photo");
      var preview = form.querySelector(".photo-preview");
      var state = form.querySelector(".photo-state");
      var submit = form.querySelector("button[type=submit]");
      pick.addEventListener("change", function () {
        var file = pick.files && pick.files[0];
        if (!file) { return; }
        state.textContent = "Preparing the photo…";
        // Sent before it is ready, the form would go without the photo.
        submit.disabled = true;
        downscale(file, function (url) {
          field.value = url;
          preview.src = url;
          preview.hidden = false;
          state.textContent = "Photo ready (" + Math.round(url.length * 3 / 4 / 1024) + " KiB).";
          submit.disabled = false;
        }, function () {
          field.value = "";
          preview.hidden = true;
          state.textContent = "This photo could not be read; take it again.";
          submit.disabled = false;
        });
      });
    });
  }

  function positions() {
    var blocks = document.querySelectorAll(".position");
    if (!blocks.length) { return; }
    function each(act) { Array.prototype.forEach.call(blocks, act); }
    function say(text) {
      each(function (block) { block.querySelector(".position-state").textContent = text; });
    }
    function known() { return blocks[0].querySelector(".lat").value !== ""; }
    function locate() {
      if (!navigator.geolocation) {
        say("No position: this browser cannot tell it. The capture can be saved without it.");
        return;
      }
      say("Finding the position…");
      navigator.geolocation.getCurrentPosition(function (found) {
        var c = found.coords;
        each(function (block) {
          block.querySelector(".lat").value = c.latitude.toFixed(7);
          block.querySelector(".lon").value = c.longitude.toFixed(7);
          block.querySelector(".accuracy").value = c.accuracy.toFixed(1);
        });
        say("Position recorded (±" + Math.round(c.accuracy) + " m).");
      }, function (error) {
        // The browser's own messages are for developers; say it plainly.
        var why = error.code === 1 ? "not allowed on this handheld"
          : error.code === 3 ? "it took too long" : "no fix available here";
        say(known()
          ? "The position recorded before is kept; a new one could not be found (" + why + ")."
          : "No position (" + why + "). The capture can be saved without it.");
      }, { enableHighAccuracy: true, timeout: 20000, maximumAge: 60000 });
    }
    each(function (block) { block.querySelector(".locate").addEventListener("click", locate); });
    // Asked at once, unless a form sent back already carries one.
    if (!known()) { locate(); }
  }
})();
