"""HTTP and WebSocket routes, one router per resource; ``create_app`` (service/app.py) mounts them."""
