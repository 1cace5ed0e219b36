pub struct TestApp;
