/* With Sense pages: a little script that enhances server-rendered forms; every page works without it
   (uploads then go one file per post). The API key never reaches this script: requests carry the HttpOnly
   session cookie, and state-changing ones the page's CSRF token. */
(function () {
  "use strict";

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.content : "";

  /* Drag and drop onto a form's file input; the image search form is sent at once. */
  function setUpDropzone(zone) {
    var input = zone.querySelector('input[type="file"]');
    if (!input) return;
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      var transfer = new DataTransfer();
      var files = input.multiple ? event.dataTransfer.files : [event.dataTransfer.files[0]];
      Array.prototype.forEach.call(files, function (file) { transfer.items.add(file); });
      input.files = transfer.files;
      var form = input.form;
      if (form && form.classList.contains("image-search")) form.requestSubmit();
    });
  }

  /* Forms that ask before they do something for good (delete). */
  function setUpConfirm(form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  }

  /* Uploads: every file on its own request, with progress, then its status until indexed or failed. */
  var FINAL = { indexed: true, failed: true, rejected: true, missing: true };
  var CONCURRENT_UPLOADS = 3;
  var POLL_EVERY_MS = 1000;
  var POLL_FOR_MS = 15 * 60 * 1000;

  function setUpUploads(form) {
    var input = form.querySelector('input[type="file"]');
    var list = document.getElementById("upload-items");
    var section = document.getElementById("uploads");
    var strings = JSON.parse(document.getElementById("upload-strings").textContent);
    input.multiple = true;
    var followed = {}; // photo id -> item
    var pollTimer = null;
    var pollUntil = 0;

    function setStatus(item, status, detail) {
      item.dataset.status = status;
      var badge = item.querySelector(".badge");
      badge.className = "badge status-" + status;
      badge.textContent = strings[status] || status;
      item.querySelector(".detail").textContent = detail || "";
    }

    function addItem(file) {
      var item = document.createElement("li");
      item.className = "upload-item";
      var preview = document.createElement("img");
      preview.alt = "";
      preview.src = URL.createObjectURL(file);
      preview.onload = function () { URL.revokeObjectURL(preview.src); };
      preview.onerror = function () { // not an image the browser can show: the server will say why
        URL.revokeObjectURL(preview.src);
        preview.removeAttribute("src");
        preview.classList.add("preview");
      };
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      var line = document.createElement("div");
      line.className = "line";
      var progress = document.createElement("progress");
      progress.max = 100;
      progress.value = 0;
      progress.setAttribute("aria-label", strings.progress + ": " + file.name);
      var badge = document.createElement("span");
      badge.className = "badge";
      var detail = document.createElement("span");
      detail.className = "detail";
      line.append(progress, badge, detail);
      item.append(preview, name, line);
      list.append(item);
      setStatus(item, "queued");
      return item;
    }

    function send(file, item, fields) {
      return new Promise(function (resolve) {
        var body = new FormData();
        fields.forEach(function (pair) { body.append(pair[0], pair[1]); });
        body.append("file", file, file.name);
        var request = new XMLHttpRequest();
        request.open("POST", form.action);
        request.setRequestHeader("Accept", "application/json");
        request.setRequestHeader("X-CSRF-Token", csrf);
        var progress = item.querySelector("progress");
        request.upload.onprogress = function (event) {
          if (event.lengthComputable) progress.value = Math.round((event.loaded / event.total) * 100);
        };
        setStatus(item, "uploading");
        request.onload = function () {
          var answer = {};
          try { answer = JSON.parse(request.responseText); } catch (ignored) { /* not JSON: the status says it */ }
          if (request.status === 200 || request.status === 202) {
            progress.value = 100;
            item.dataset.photoId = answer.id;
            followed[answer.id] = item;
            update(item, answer);
            if (answer.duplicate) item.querySelector(".detail").textContent = strings.duplicate;
            startPolling();
          } else {
            setStatus(item, "rejected", answer.detail || String(request.status));
          }
          resolve();
        };
        request.onerror = function () {
          setStatus(item, "rejected", strings.network);
          resolve();
        };
        request.send(body);
      });
    }

    function update(item, photo) {
      setStatus(item, photo.status, photo.error || "");
      if (photo.status === "indexed" && photo.thumbnail_url && !item.querySelector("a")) {
        var link = document.createElement("a");
        link.href = photo.page_url;
        var name = item.querySelector(".name");
        link.textContent = name.textContent;
        name.textContent = "";
        name.append(link);
        item.querySelector("img").src = photo.thumbnail_url;
      }
    }

    function poll() {
      var ids = Object.keys(followed).filter(function (id) { return !FINAL[followed[id].dataset.status]; });
      if (!ids.length || Date.now() > pollUntil) { pollTimer = null; return; }
      var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
      fetch("/upload/status?" + query, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : { photos: [] }; })
        .then(function (answer) {
          answer.photos.forEach(function (photo) { if (followed[photo.id]) update(followed[photo.id], photo); });
        })
        .catch(function () { /* a missed poll is retried by the next one */ })
        .then(function () { pollTimer = window.setTimeout(poll, POLL_EVERY_MS); });
    }

    function startPolling() {
      pollUntil = Date.now() + POLL_FOR_MS;
      if (pollTimer === null) pollTimer = window.setTimeout(poll, POLL_EVERY_MS);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var files = Array.prototype.slice.call(input.files);
      if (!files.length) return;
      section.hidden = false;
      var fields = [];
      new FormData(form).forEach(function (value, name) {
        if (name !== "file" && name !== "csrf_token" && value !== "") fields.push([name, value]);
      });
      var queue = files.map(function (file) { return { file: file, item: addItem(file) }; });
      function next() {
        var job = queue.shift();
        if (!job) return Promise.resolve();
        return send(job.file, job.item, fields).then(next);
      }
      var lanes = Math.min(CONCURRENT_UPLOADS, queue.length);
      for (var i = 0; i < lanes; i += 1) next();
      input.value = "";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone]").forEach(setUpDropzone);
    document.querySelectorAll("form[data-confirm]").forEach(setUpConfirm);
    var uploadForm = document.getElementById("upload-form");
    if (uploadForm) setUpUploads(uploadForm);
  });
})();
