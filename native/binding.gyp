{
  "targets": [
    {
      "target_name": "layerfs",
      "sources": [
        "src/addon.c",
        "src/handles.c",
        "src/session.c",
        "src/sys.c"
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11",
                 "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)", "-lpthread"]
    }
  ]
}
