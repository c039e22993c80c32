// Loaded just before require.js and the vendored ipywidgets HTML manager
// (widgets/embed-amd.js) on pages that carry saved widget state.
(function () {
  // 1. The manager's font files (Font Awesome, for button icons) sit beside
  //    embed-amd.js in _static/widgets/, not beside the page.
  //    The manager finds them from the URL RequireJS gives its module, so map
  //    that module's folder onto _static/widgets/ (a global `require` object
  //    defined before require.js loads is its configuration).
  var here = document.currentScript && document.currentScript.src;
  if (here) {
    var widgets = here.replace(/bnbook\/[^/]*$/, "widgets");
    window.__jupyter_widgets_assets_path__ = widgets + "/";
    if (typeof window.require === "undefined") {
      window.require = { paths: { "@jupyter-widgets/html-manager/dist": widgets } };
    }
  }

  // 2. The manager typesets widget labels with the MathJax 2 call
  //    MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads
  //    MathJax 3, which has no Hub. Give it a small Hub that forwards to
  //    MathJax 3 (installed once MathJax 3 has replaced its configuration
  //    object, i.e. after the deferred scripts have run).
  function installHub() {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.version || String(mj.version).charAt(0) !== "3") return;
    mj.Hub = {
      Queue: function () {
        var elements = [];
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) elements.push(job[2]);
        }
        if (!elements.length || !mj.typesetPromise) return;
        var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
        ready.then(function () { return mj.typesetPromise(elements); }).catch(function (err) {
          console.warn("MathJax could not typeset a widget label:", err);
        });
      },
    };
  }
  document.addEventListener("DOMContentLoaded", installHub);
  window.addEventListener("load", installHub);
})();
