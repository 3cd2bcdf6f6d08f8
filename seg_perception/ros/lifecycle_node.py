"""`seg_lifecycle_node`: seg_node as a managed (lifecycle) node, for nav2_lifecycle_manager and launch files that
bring nodes up with configure/activate. Same name (seg_node), parameters, topics and diagnostics as the plain node;
only when things happen differs:

- configure: declare and check the parameters, open and warm up the backend, build the pipeline and the (lifecycle)
  publishers. A failure returns FAILURE with its reason logged in one line; the node stays unconfigured and up.
- activate: subscribe, start /diagnostics, publish label_info (latched).
- deactivate: unsubscribe and stop /diagnostics; the publishers fall silent.
- cleanup: as shutdown, but the process stays to be configured again.
- shutdown: as the plain node's close (cut a slow inference short, write the trace, close the backend), then exit 0.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future

from seg_perception.backends import BackendError
from seg_perception.core.node_params import ParameterError
from seg_perception.ros.node import SegNodeParts, spin


class SegLifecycleNode(SegNodeParts, LifecycleNode):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("seg_node", **node_kwargs)
        self.finished = Future()  # done once shut down: the process then exits
        self.backend = self._worker = self.pose_source = None  # set while configured
        self._output_publishers: list = []
        self._input_subscriptions: list = []
        self._diagnostics_timer = None

    def _publisher(self, msg_type, topic: str, qos):
        publisher = self.create_lifecycle_publisher(msg_type, topic, qos)
        self._output_publishers.append(publisher)
        return publisher

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._build()
        except Exception as exc:  # the process stays up to be configured again, whatever went wrong
            known = isinstance(exc, (ParameterError, BackendError, ValueError, OSError))  # the plain node's start-up
            self.get_logger().error(f"cannot configure: {exc if known else f'{type(exc).__name__}: {exc}'}")
            if self.backend is not None:  # opened before the failure
                self.backend.close()
            if self.pose_source is not None:
                self.pose_source.close()
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("configured; activate to subscribe")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers before any frame comes in
        if self.label_info is not None:
            publisher, msg = self.label_info
            msg.header.stamp = self.get_clock().now().to_msg()
            publisher.publish(msg)
        self._input_subscriptions = self._subscribe()
        self._diagnostics_timer = self._start_diagnostics()
        self.get_logger().info(f"active: {self._started_line()}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        self.finished.set_result(True)
        return super().on_shutdown(state)

    def _unsubscribe(self) -> None:
        """Stop taking frames and publishing /diagnostics."""
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None

    def close(self) -> None:
        """Release everything configure built (nothing when unconfigured): on cleanup, shutdown or a signal."""
        if self.backend is None:
            return
        self._unsubscribe()
        super().close()  # stops the worker, writes the trace, closes the backend
        self.remove_on_set_parameters_callback(self._on_set_parameters)
        self._release()

    def _release(self) -> None:
        self.backend = self._worker = self.pose_source = None
        for publisher in self._output_publishers:
            self.destroy_lifecycle_publisher(publisher)
        self._output_publishers = []


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)  # installs SIGINT and SIGTERM handlers that shut the context down
    node = SegLifecycleNode()
    spin(node, node.finished)  # runs until shut down by a transition or a signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
