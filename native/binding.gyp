{
  "targets": [
    {
      "target_name": "layerfs",
      "sources": [
        "src/addon.c",
        "src/handles.c",
        "src/conn.c",
        "src/fusemount.c",
        "src/service.c",
        "src/session.c",
        "src/sys.c",
        "src/thin.c",
        "src/uring.c"
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
      "libraries": ["-lpthread", "-luring"]
    },
    {
      "target_name": "layerfs-helper",
      "type": "executable",
      "sources": ["helper/helper.c", "src/fusemount.c"],
      "defines": ["LAYERFS_NODE=\"<!(node -p process.execPath)\"", "LAYERFS_BUILD_ROOT=\"<(module_root_dir)/..\"", "LAYERFS_VERSION=\"<!(node -p \"require('../package.json').version\")\""],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "-Wno-format-truncation", "-Wno-unused-result"]
    }
  ]
}
