{
  "targets": [
    {
      "target_name": "layerfs",
      "sources": [
        "src/addon.c",
        "src/handles.c",
        "src/conn.c",
        "src/session.c",
        "src/sys.c",
        "src/uring.c"
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
      "libraries": ["-lpthread", "-luring"]
    }
  ]
}
