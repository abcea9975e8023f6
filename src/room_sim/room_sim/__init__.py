"""room_sim: a 2D room simulator (ROS-free world in world.py, thin ROS node in node.py)."""
