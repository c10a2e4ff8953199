"""TFF execution: the in-process C++ context, worker services (gRPC executors) and their guard."""
